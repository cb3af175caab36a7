package main

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// TestBuildIndexHasBothPlatforms builds a release index for amd64 and
// arm64 and reads it back as a loader does: two images, each declaring its
// platform, each holding its own architecture's binaries.
func TestBuildIndexHasBothPlatforms(t *testing.T) {
	dir := t.TempDir()
	archs := []string{"amd64", "arm64"}
	for _, arch := range archs {
		if err := os.MkdirAll(filepath.Join(dir, arch), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{"palisade-agent", "palisade"} {
			if err := os.WriteFile(filepath.Join(dir, arch, b), []byte(b+" for "+arch), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	out := filepath.Join(t.TempDir(), "palisade-oci.tar")
	digest, err := buildIndex(out, "example.org/palisade:v0.2.0", dir, archs, []string{"palisade-agent", "palisade"})
	if err != nil {
		t.Fatal(err)
	}

	unpacked := untar(t, out)
	idx, err := layout.ImageIndexFromPath(unpacked)
	if err != nil {
		t.Fatalf("read the layout: %v", err)
	}
	top, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(top.Manifests) != 1 || top.Manifests[0].Digest != digest ||
		top.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "example.org/palisade:v0.2.0" {
		t.Fatalf("index.json %+v, want one index %s named example.org/palisade:v0.2.0", top.Manifests, digest)
	}
	release, err := idx.ImageIndex(digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := release.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, d := range im.Manifests {
		if d.Platform == nil {
			t.Fatalf("manifest %s has no platform", d.Digest)
		}
		arch := d.Platform.Architecture
		platforms = append(platforms, d.Platform.OS+"/"+arch)
		img, err := release.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != arch || cf.OS != "linux" {
			t.Errorf("image for %s declares %s/%s in its config", arch, cf.OS, cf.Architecture)
		}
		files := imageFiles(t, img)
		if got := files["usr/local/bin/palisade-agent"]; got != "palisade-agent for "+arch {
			t.Errorf("image for %s holds agent %q, want its own architecture's", arch, got)
		}
	}
	slices.Sort(platforms)
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
}

func TestBuildIndexRefusesAMissingArchitecture(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "amd64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "amd64", "palisade-agent"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := buildIndex(filepath.Join(t.TempDir(), "o.tar"), "example.org/p:v1", dir, []string{"amd64", "arm64"}, []string{"palisade-agent"}); err == nil {
		t.Fatal("an index without arm64's binaries was written")
	}
}

func untar(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, hdr.Name)
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// imageFiles are the regular files of img's filesystem and their contents.
func imageFiles(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	files := map[string]string{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			data, _ := io.ReadAll(tr)
			files[hdr.Name] = string(data)
		}
	}
}
