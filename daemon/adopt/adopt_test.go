package adopt

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/endpoint"
)

const node = "node-1"

// bridgeResult is what the bridge plugin (and Flannel, delegating to it)
// returns: the bridge, the host veth, the pod's eth0.
const bridgeResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:00:00:00:00:01"},` +
	`{"name":"veth1234","mac":"aa:00:00:00:00:02"},{"name":"eth0","mac":"aa:00:00:00:00:03","sandbox":"/var/run/netns/x"}],` +
	`"ips":[{"interface":2,"address":"10.244.1.5/24","gateway":"10.244.1.1"}]}`

func makePod(tweaks ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", UID: types.UID("uid-1")},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}}},
	}
	for _, t := range tweaks {
		t(p)
	}
	return p
}

func makeEntry(tweaks ...func(*cached)) cached {
	c := cached{
		Kind: "cniCacheV1", ContainerID: "c0ffee", IfName: "eth0", NetworkName: "cbr0", NetNS: "/var/run/netns/x",
		CNIArgs: [][2]string{{"K8S_POD_NAMESPACE", "prod"}, {"K8S_POD_NAME", "web"}, {"K8S_POD_UID", "uid-1"}},
		Result:  json.RawMessage(bridgeResult),
	}
	for _, t := range tweaks {
		t(&c)
	}
	return c
}

func TestMatch(t *testing.T) {
	wantEP := agentapi.Endpoint{
		ID: "c0ffee_eth0", ContainerID: "c0ffee", IfName: "eth0", Netns: "/var/run/netns/x",
		PodNamespace: "prod", PodName: "web", PodUID: "uid-1",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.5")}, Adopted: true,
	}
	for _, tc := range []struct {
		name       string
		pod        *corev1.Pod // nil: no such pod
		entry      cached
		registered bool
		wantReason string // "" = adopted
	}{
		{name: "a running pod of this node with matching IPs is adopted", pod: makePod(), entry: makeEntry()},
		{name: "an endpoint the registry knows is left to it", pod: makePod(), entry: makeEntry(), registered: true, wantReason: "already registered"},
		{name: "a pod that is gone is not adopted", entry: makeEntry(), wantReason: "pod gone"},
		{name: "a pod of another node is not adopted", pod: makePod(func(p *corev1.Pod) { p.Spec.NodeName = "node-2" }), entry: makeEntry(), wantReason: "another node"},
		{name: "an entry of an earlier pod of the same name is not adopted", pod: makePod(func(p *corev1.Pod) { p.UID = "uid-2" }), entry: makeEntry(), wantReason: "earlier pod"},
		{name: "a stale sandbox whose IPs are not the pod's is not adopted", pod: makePod(func(p *corev1.Pod) { p.Status.PodIPs = []corev1.PodIP{{IP: "10.244.1.9"}} }), entry: makeEntry(), wantReason: "stale sandbox"},
		{name: "a pod without IPs in its status is not adopted", pod: makePod(func(p *corev1.Pod) { p.Status.PodIPs = nil }), entry: makeEntry(), wantReason: "no IPs"},
		{name: "a host-network pod is not adopted", pod: makePod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }), entry: makeEntry(), wantReason: "host-network"},
		{name: "a finished pod is not adopted", pod: makePod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), entry: makeEntry(), wantReason: "finished"},
		{name: "an entry without pod CNI_ARGS is not adopted", pod: makePod(), entry: makeEntry(func(c *cached) { c.CNIArgs = nil }), wantReason: "no Kubernetes pod"},
		{
			name: "a result with no host-side interface is not adopted", pod: makePod(),
			entry: makeEntry(func(c *cached) {
				c.Result = json.RawMessage(`{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/24"}]}`)
			}),
			wantReason: "no host-side interface",
		},
		{
			name: "a pod with more addresses than the datapath checks sources against is not adopted",
			pod: makePod(func(p *corev1.Pod) {
				p.Status.PodIPs = nil
				for i := range 5 {
					p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: fmt.Sprintf("10.244.1.%d", 5+i)})
				}
			}),
			entry: makeEntry(func(c *cached) {
				c.Result = json.RawMessage(`{"cniVersion":"1.0.0","interfaces":[{"name":"veth1234"},{"name":"eth0","sandbox":"/x"}],"ips":[` +
					`{"interface":1,"address":"10.244.1.5/24"},{"interface":1,"address":"10.244.1.6/24"},{"interface":1,"address":"10.244.1.7/24"},` +
					`{"interface":1,"address":"10.244.1.8/24"},{"interface":1,"address":"10.244.1.9/24"}]}`)
			}),
			wantReason: "more than the 4",
		},
		{
			name: "an older CNI version result is converted", pod: makePod(),
			entry: makeEntry(func(c *cached) {
				c.Result = json.RawMessage(`{"cniVersion":"0.3.1","interfaces":[{"name":"veth1234"},{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","interface":1,"address":"10.244.1.5/24"}]}`)
			}),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
			if tc.pod != nil {
				if err := idx.Add(tc.pod); err != nil {
					t.Fatal(err)
				}
			}
			reg, err := endpoint.Open(filepath.Join(t.TempDir(), "endpoints.json"))
			if err != nil {
				t.Fatal(err)
			}
			if tc.registered {
				if err := reg.Put(agentapi.Endpoint{ID: "c0ffee_eth0"}); err != nil {
					t.Fatal(err)
				}
			}
			cands, skipped := match(map[string]cached{"cbr0-c0ffee-eth0": tc.entry}, corelisters.NewPodLister(idx), node, &endpoint.Manager{Registry: reg})
			if tc.wantReason == "" {
				if len(cands) != 1 {
					t.Fatalf("not adopted: %+v", skipped)
				}
				if diff := cmp.Diff(wantEP, cands[0].ep, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Errorf("endpoint (-want +got):\n%s", diff)
				}
				return
			}
			if len(cands) != 0 || len(skipped) != 1 {
				t.Fatalf("adopted %+v, want skipped for %q", cands, tc.wantReason)
			}
			if !contains(skipped[0].reason, tc.wantReason) {
				t.Errorf("reason %q, want %q", skipped[0].reason, tc.wantReason)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func TestHostVethSkipsTheBridge(t *testing.T) {
	links := map[string]netlink.Link{
		"cni0":     &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0", Index: 3}},
		"veth1234": &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth1234", Index: 7}},
	}
	byName := func(n string) (netlink.Link, error) {
		if l, ok := links[n]; ok {
			return l, nil
		}
		return nil, errors.New("no such link")
	}
	name, idx, err := hostVeth(byName, []string{"cni0", "gone", "veth1234"})
	if err != nil || name != "veth1234" || idx != 7 {
		t.Errorf("hostVeth = %s, %d, %v; want veth1234, 7", name, idx, err)
	}
	if _, _, err := hostVeth(byName, []string{"cni0"}); err == nil {
		t.Error("hostVeth found a veth among a bridge only")
	}
}

func TestReadCacheSkipsForeignFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "results"), 0o700); err != nil {
		t.Fatal(err)
	}
	good, _ := json.Marshal(makeEntry())
	for name, content := range map[string]string{"cbr0-c0ffee-eth0": string(good), "junk": "not json", "other-kind": `{"kind":"v2"}`} {
		if err := os.WriteFile(filepath.Join(dir, "results", name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := readCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["cbr0-c0ffee-eth0"].ContainerID != "c0ffee" {
		t.Errorf("readCache = %+v, want only the libcni entry", got)
	}
	if got, err := readCache(filepath.Join(dir, "missing")); err != nil || len(got) != 0 {
		t.Errorf("missing cache: %v, %v; want empty", got, err)
	}
}
