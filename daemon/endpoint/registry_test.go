package endpoint

import (
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

func TestRegistrySurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "endpoints.json")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	a := agentapi.Endpoint{ID: "a_eth0", PodNamespace: "ns", PodName: "a", HostIfIndex: 4, IPs: []netip.Addr{netip.MustParseAddr("10.244.1.2")}}
	b := agentapi.Endpoint{ID: "b_eth0", PodNamespace: "ns", PodName: "b", HostIfIndex: 5}
	for _, ep := range []agentapi.Endpoint{a, b} {
		if err := r.Put(ep); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := r.Delete("b_eth0"); !ok || err != nil {
		t.Fatalf("delete b: ok=%v err=%v", ok, err)
	}
	if _, ok, _ := r.Delete("b_eth0"); ok {
		t.Error("second delete found the endpoint again")
	}
	again, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]agentapi.Endpoint{a}, again.List(), cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("reopened registry (-want +got):\n%s", diff)
	}
}

func TestRegistryRejectsCorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "endpoints.json")
	if err := writeFile(path, "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil {
		t.Error("a corrupt registry opened without error")
	}
}
