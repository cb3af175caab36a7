// Command mkimage writes Palisade's OCI image to a local tarball without a
// container engine: one layer holding the given binaries under
// /usr/local/bin, the agent as entrypoint, a fixed timestamp so that the
// same binaries always give the same image digest. The tarball is in the
// `docker save` format that `ctr images import`, `docker load` and
// `podman load` all read.
//
//	go run ./scripts/mkimage -o bin/palisade-image.tar -tag localhost/palisade:dev bin/palisade-agent bin/palisade
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "mkimage: name the binaries to put in the image")
		return 2
	}
	digest, err := build(*out, *tag, *arch, fs.Args())
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
	layerTar, err := layer(binaries)
	if err != nil {
		return v1.Hash{}, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil })
	if err != nil {
		return v1.Hash{}, fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Entrypoint = []string{entrypoint}
	cf.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": "palisade"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return v1.Hash{}, fmt.Errorf("set config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return v1.Hash{}, fmt.Errorf("create output directory: %w", err)
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		return v1.Hash{}, fmt.Errorf("write %s: %w", out, err)
	}
	return img.Digest()
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
