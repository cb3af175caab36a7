package testbed

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedClusterKubeProxy brings up two nodes with the pod network
// alone (no palisade, so every Service connection is kube-proxy's DNAT) in
// each proxy mode, runs pods through the pod runner and the scheduler, and
// probes a Service's ClusterIP from the backend's node and from the other.
func TestPrivilegedClusterKubeProxy(t *testing.T) {
	privileged.Require(t)
	for _, mode := range []ProxyMode{ProxyIPTables, ProxyNFTables} {
		t.Run(string(mode), func(t *testing.T) {
			c := StartCluster(t, ClusterOptions{Nodes: 2, ProxyMode: mode, WithoutPalisade: true})
			ctx := context.Background()
			c.CreateNamespace(t, "svc", nil)
			web := c.RunPod(t, pinned(MakePod("svc", "web", map[string]string{"app": "web"}, TCP(8080), UDP(5353)), "node-1"))
			near := c.RunPod(t, pinned(MakePod("svc", "near", nil), "node-1"))
			far := c.RunPod(t, pinned(MakePod("svc", "far", nil), "node-2"))

			obj, err := c.Client.CoreV1().Pods("svc").Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if obj.Status.PodIP != web.IP().String() || obj.Status.Phase != corev1.PodRunning || !podReady(obj) {
				t.Errorf("web status: ip %q phase %s ready %v, want %s Running ready", obj.Status.PodIP, obj.Status.Phase, podReady(obj), web.IP())
			}

			vip := c.CreateService(t, "svc", "web", map[string]string{"app": "web"},
				ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, Target: intstr.FromInt32(8080)},
				ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, Target: intstr.FromInt32(5353)})
			wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			if err := c.WaitEndpoints(wctx, "svc", "web", 1); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name  string
				from  *Pod
				port  int
				proto corev1.Protocol
			}{
				{"tcp from the backend's node", near, 80, corev1.ProtocolTCP},
				{"udp from the backend's node", near, 53, corev1.ProtocolUDP},
				{"tcp from another node", far, 80, corev1.ProtocolTCP},
				{"udp from another node", far, 53, corev1.ProtocolUDP},
			} {
				if v := probeEventually(t, tc.from, vip, tc.port, tc.proto, Connected); v.Reply != "web" {
					t.Errorf("%s: %s -> %s:%d/%s: %s, want connected to web", tc.name, tc.from, vip, tc.port, tc.proto, v)
				}
			}
			// A port the Service does not have is rejected by kube-proxy's
			// rules or reaches no socket; either way nothing connects.
			if v := Probe(ctx, near, vip, 81, corev1.ProtocolTCP); v.Outcome == Connected {
				t.Errorf("probe of a port the service lacks: %s", v)
			}

			// Namespace deletion: the namespace controller deletes the pods,
			// the runner tears down their sandboxes and confirms, and the
			// namespace goes away.
			if err := c.Client.CoreV1().Namespaces().Delete(ctx, "svc", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				_, err := c.Client.CoreV1().Namespaces().Get(ctx, "svc", metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("namespace svc still there 30s after delete (err %v)", err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if p := c.RunningPod("svc", "web"); p != nil {
				t.Errorf("pod svc/web still running after its namespace was deleted")
			}
		})
	}
}

// TestPrivilegedSchedulerSpreadsPods checks that pods without a node are
// bound and run, spread over the nodes.
func TestPrivilegedSchedulerSpreadsPods(t *testing.T) {
	privileged.Require(t)
	c := StartCluster(t, ClusterOptions{Nodes: 2, WithoutPalisade: true})
	nodes := map[string]int{}
	for _, name := range []string{"a", "b", "c", "d"} {
		p := c.RunPod(t, MakePod("default", name, nil))
		if !p.Node.PodCIDR.Contains(p.IP()) {
			t.Errorf("pod %s: IP %s outside node %s's CIDR", p, p.IP(), p.Node.Name)
		}
		nodes[p.Node.Name]++
	}
	if nodes["node-1"] != 2 || nodes["node-2"] != 2 {
		t.Errorf("pods per node: %v, want 2 on each", nodes)
	}
}

func pinned(p *corev1.Pod, node string) *corev1.Pod {
	p.Spec.NodeName = node
	return p
}

// probeEventually probes until the outcome is want or 15 s pass (kube-proxy
// programs a new Service asynchronously) and returns the last verdict.
func probeEventually(t *testing.T, from *Pod, to netip.Addr, port int, proto corev1.Protocol, want Outcome) Verdict {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		v := Probe(context.Background(), from, to, port, proto)
		if v.Outcome == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
}
