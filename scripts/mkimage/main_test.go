package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func writeBins(t *testing.T, contents map[string]string) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for n, c := range contents {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, []byte(c), 0o755); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func TestBuild(t *testing.T) {
	bins := writeBins(t, map[string]string{"palisade-agent": "agent bytes", "palisade": "plugin bytes"})
	out := filepath.Join(t.TempDir(), "img.tar")
	digest, err := build(out, "localhost/palisade:dev", "amd64", bins)
	if err != nil {
		t.Fatal(err)
	}

	// What a loader sees: the tag, the config and the files.
	tag, _ := name.NewTag("localhost/palisade:dev")
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := img.Digest(); got != digest {
		t.Errorf("digest in tarball %s, build returned %s", got, digest)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cmp.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/palisade-agent"}) {
		t.Errorf("config os=%s arch=%s entrypoint=%v", cf.OS, cf.Architecture, cf.Config.Entrypoint)
	}
	files := map[string]string{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg {
			data, _ := io.ReadAll(tr)
			files[hdr.Name] = string(data)
			if hdr.Mode&0o111 == 0 {
				t.Errorf("%s is not executable", hdr.Name)
			}
		}
	}
	want := map[string]string{"usr/local/bin/palisade-agent": "agent bytes", "usr/local/bin/palisade": "plugin bytes"}
	if diff := cmp.Diff(want, files); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}

	// Reproducible: the same binaries give the same digest.
	again, err := build(filepath.Join(t.TempDir(), "again.tar"), "localhost/palisade:dev", "amd64", bins)
	if err != nil || again != digest {
		t.Errorf("second build %s (%v), want %s", again, err, digest)
	}
}

func TestBuildRefusesAnImageWithoutTheAgent(t *testing.T) {
	bins := writeBins(t, map[string]string{"palisade": "plugin"})
	if _, err := build(filepath.Join(t.TempDir(), "x.tar"), "localhost/palisade:dev", "amd64", bins); err == nil {
		t.Error("build without palisade-agent succeeded")
	}
}
