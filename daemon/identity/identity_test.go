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

// TestForgetsCountsRetainsThatForgot: Forgets moves with a Retain that
// forgets a key, not with one that keeps every key nor with a new key.
func TestForgetsCountsRetainsThatForgot(t *testing.T) {
	a := NewAllocator()
	a.ID("a")
	a.ID("b")
	for _, tc := range []struct {
		name string
		do   func()
		want uint64
	}{
		{"retain all", func() { a.Retain(map[string]bool{"a": true}, map[string]bool{"b": true}) }, 0},
		{"new key", func() { a.ID("c") }, 0},
		{"retain forgets c", func() { a.Retain(map[string]bool{"a": true, "b": true}) }, 1},
		{"retain forgets b", func() { a.Retain(map[string]bool{"a": true}) }, 2},
	} {
		tc.do()
		if got := a.Forgets(); got != tc.want {
			t.Errorf("after %s: Forgets() = %d, want %d", tc.name, got, tc.want)
		}
	}
}
