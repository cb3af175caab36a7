package identity

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAllocatorIsStableAndPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identities.json")
	a := NewAllocator()
	x, y := a.ID("pod|a"), a.ID("pod|b")
	if x < FirstDynamic || y < FirstDynamic || x == y {
		t.Fatalf("ids %d and %d: want distinct and >= %d", x, y, FirstDynamic)
	}
	if a.ID("pod|a") != x {
		t.Error("the same key got a second identity")
	}
	if err := a.Save(path); err != nil {
		t.Fatal(err)
	}
	b, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if b.ID("pod|a") != x || b.ID("pod|b") != y {
		t.Error("identities changed across a restart")
	}
	if z := b.ID("pod|c"); z == x || z == y {
		t.Errorf("a new key after reload reused identity %d", z)
	}
}

func TestRetainNeverReusesNumbers(t *testing.T) {
	a := NewAllocator()
	old := a.ID("gone")
	a.Retain(map[string]bool{})
	if n := a.ID("new"); n == old {
		t.Errorf("identity %d of a forgotten key was handed out again", n)
	}
}

func TestLoadMissingAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(filepath.Join(dir, "none.json")); err != nil {
		t.Errorf("a missing file: %v, want an empty allocator", err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil {
		t.Error("a corrupt file loaded without error")
	}
}

func TestSaveWritesOnlyChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identities.json")
	a := NewAllocator()
	a.ID("pod|a")
	if err := a.Save(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	a.ID("pod|a") // known: nothing changes
	if err := a.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("an unchanged table was written again (%v)", err)
	}
	a.ID("pod|b")
	if err := a.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("a changed table was not written: %v", err)
	}
}
