// Command mkimage writes Palisade's OCI image to a local tarball without a
// container engine: one layer holding the given binaries under
// /usr/local/bin, the agent as entrypoint, a fixed timestamp so that the
// same binaries always give the same image digest. The tarball is in the
// `docker save` format that `ctr images import`, `docker load` and
// `podman load` all read.
//
//	go run ./scripts/mkimage -o bin/palisade-image.tar -tag localhost/palisade:dev bin/palisade-agent bin/palisade
//
// With -platforms it writes a multi-architecture release instead: an OCI
// image layout as a tarball (what `ctr images import`, `skopeo copy
// oci-archive:` and `crane push` read), whose index holds one image per
// architecture, each from the binaries in <dir>/<arch>/:
//
//	go run ./scripts/mkimage -o bin/release/palisade-oci.tar -tag ghcr.io/x/palisade:v0.2.0 -platforms amd64,arm64 -dir bin/release palisade-agent palisade palisadectl
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// binDir is where the binaries live in the image; the manifests name it.
const binDir = "usr/local/bin"

// entrypoint is the agent; the installer is its install-cni subcommand.
const entrypoint = "/usr/local/bin/palisade-agent"

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "bin/palisade-image.tar", "tarball to write")
	tag := fs.String("tag", "localhost/palisade:dev", "image reference recorded in the tarball")
	arch := fs.String("arch", runtime.GOARCH, "image architecture (must match the binaries)")
	platforms := fs.String("platforms", "", "comma-separated architectures: write a multi-architecture OCI layout tarball from <dir>/<arch>/<binary>")
	dir := fs.String("dir", "bin/release", "with -platforms: the directory holding a subdirectory of binaries per architecture")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "mkimage: name the binaries to put in the image")
		return 2
	}
	var digest v1.Hash
	var err error
	if *platforms != "" {
		digest, err = buildIndex(*out, *tag, *dir, strings.Split(*platforms, ","), fs.Args())
	} else {
		digest, err = build(*out, *tag, *arch, fs.Args())
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		return 1
	}
	fmt.Printf("%s %s %s\n", *out, *tag, digest)
	return 0
}

// build writes the image of binaries to out, tagged tag, and returns its
// digest.
func build(out, tag, arch string, binaries []string) (v1.Hash, error) {
	ref, err := name.NewTag(tag)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("parse tag: %w", err)
	}
	img, err := image(arch, binaries, false)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return v1.Hash{}, fmt.Errorf("create output directory: %w", err)
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return v1.Hash{}, fmt.Errorf("write %s: %w", out, err)
	}
	return img.Digest()
}

// image is the single-layer image of binaries for arch; oci selects OCI
// media types (for an OCI index) over Docker's (for `docker save` tarballs).
func image(arch string, binaries []string, oci bool) (v1.Image, error) {
	layerTar, err := layer(binaries)
	if err != nil {
		return nil, err
	}
	var opts []tarball.LayerOption
	base := empty.Image
	if oci {
		opts = append(opts, tarball.WithMediaType(types.OCILayer))
		base = mutate.MediaType(mutate.ConfigMediaType(base, types.OCIConfigJSON), types.OCIManifestSchema1)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil }, opts...)
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(base, l)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": "palisade"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// buildIndex writes an OCI image layout tarball to out whose index, named
// tag, holds one image per architecture in archs, each of the binaries
// found in dir/<arch>/; it returns the index's digest.
func buildIndex(out, tag, dir string, archs, binaries []string) (v1.Hash, error) {
	if _, err := name.NewTag(tag); err != nil {
		return v1.Hash{}, fmt.Errorf("parse tag: %w", err)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range archs {
		var paths []string
		for _, b := range binaries {
			paths = append(paths, filepath.Join(dir, arch, b))
		}
		img, err := image(arch, paths, true)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("image for %s: %w", arch, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			Platform: &v1.Platform{OS: "linux", Architecture: arch},
		}})
	}
	tmp, err := os.MkdirTemp(filepath.Dir(out), ".oci-layout-")
	if err != nil {
		return v1.Hash{}, fmt.Errorf("create layout directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	p, err := layout.Write(tmp, empty.Index)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write layout: %w", err)
	}
	// The ref name is what `ctr images import` names the image.
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		return v1.Hash{}, fmt.Errorf("write index: %w", err)
	}
	if err := tarDir(out, tmp); err != nil {
		return v1.Hash{}, err
	}
	return idx.Digest()
}

// tarDir writes the files under dir to the tarball out, in name order
// with zero timestamps, so the same layout gives the same bytes.
func tarDir(out, dir string) error {
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, Format: tar.FormatPAX})
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o644, Size: int64(len(data)), Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return f.Close()
}

// layer is a tar of the binaries under binDir, with zero timestamps and
// root ownership so that it depends only on the binaries' bytes.
func layer(binaries []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, dir := range []string{"usr/", "usr/local/", binDir + "/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, Format: tar.FormatPAX}); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
	}
	seen := map[string]bool{}
	for _, b := range binaries {
		data, err := os.ReadFile(b)
		if err != nil {
			return nil, fmt.Errorf("read binary: %w", err)
		}
		base := filepath.Base(b)
		if seen[base] {
			return nil, fmt.Errorf("two binaries named %s", base)
		}
		seen[base] = true
		hdr := &tar.Header{
			Typeflag: tar.TypeReg, Name: path.Join(binDir, base), Mode: 0o755,
			Size: int64(len(data)), Format: tar.FormatPAX,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("write layer: %w", err)
		}
	}
	if !seen[filepath.Base(entrypoint)] {
		return nil, errors.New("palisade-agent is not among the binaries; it is the entrypoint")
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return buf.Bytes(), nil
}
