package policy

import (
	"slices"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/palisade-cni/palisade/daemon/identity"
	"github.com/palisade-cni/palisade/daemon/k8s"
)

// fatten gives a pod what the kubelet and controllers add and no policy
// reads, so that slimming it has something to remove.
func fatten(p *corev1.Pod) *corev1.Pod {
	f := p.DeepCopy()
	f.Annotations = map[string]string{"checksum/config": "abc"}
	f.Spec.Volumes = []corev1.Volume{{Name: "data"}}
	f.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}}
	f.Spec.Containers = append(f.Spec.Containers, corev1.Container{Name: "sidecar", Image: "envoy"})
	f.Status.HostIP = "192.0.2.1"
	f.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	return f
}

// The agent's informers keep only part of each pod (k8s.Slim): every rule
// of the API must compile to the same datapath from what they keep.
func TestSlimPodsCompileAlike(t *testing.T) {
	for _, tt := range semanticCases() {
		t.Run(tt.name, func(t *testing.T) {
			compile := func(slim bool) Result {
				s := cluster()
				s.Policies = tt.policies
				for i, p := range s.Pods {
					p = fatten(p)
					if slim {
						o, err := k8s.Slim(p)
						if err != nil {
							t.Fatal(err)
						}
						p = o.(*corev1.Pod)
					}
					for j := range s.Endpoints {
						if s.Endpoints[j].Pod == s.Pods[i] {
							s.Endpoints[j].Pod = p
						}
					}
					s.Pods[i] = p
				}
				return Compile(s, identity.NewAllocator())
			}
			full, slim := compile(false), compile(true)
			// Identity numbers are arbitrary: the same address must have
			// the same identity, and rules must name the same identities.
			toFull := map[uint32]uint32{}
			for p, id := range slim.IPCache {
				fid, ok := full.IPCache[p]
				if !ok {
					t.Fatalf("%s in the ipcache only from slim pods", p)
				}
				if prev, seen := toFull[id]; seen && prev != fid {
					t.Fatalf("slim identity %d is two full ones, %d and %d", id, prev, fid)
				}
				toFull[id] = fid
			}
			if len(full.IPCache) != len(slim.IPCache) {
				t.Fatalf("ipcache: %d entries from full pods, %d from slim ones", len(full.IPCache), len(slim.IPCache))
			}
			if d := gocmp.Diff(sorted(full.Endpoints, nil), sorted(slim.Endpoints, toFull), equateAddrs); d != "" {
				t.Errorf("endpoints (-full pods +slim pods):\n%s", d)
			}
		})
	}
}

// sorted translates identities through m (nil: none) and sorts the rules.
func sorted(eps map[string]EndpointPolicy, m map[uint32]uint32) map[string]EndpointPolicy {
	tr := func(id uint32) uint32 {
		if to, ok := m[id]; ok {
			return to
		}
		return id
	}
	out := map[string]EndpointPolicy{}
	for id, ep := range eps {
		ep.Identity = tr(ep.Identity)
		for _, rules := range []*[]Rule{&ep.Ingress, &ep.Egress} {
			*rules = slices.Clone(*rules)
			for i := range *rules {
				(*rules)[i].Peer = tr((*rules)[i].Peer)
			}
			*rules = renumber(EndpointPolicy{Ingress: *rules}, 0, 0).Ingress // sorts
		}
		out[id] = ep
	}
	return out
}
