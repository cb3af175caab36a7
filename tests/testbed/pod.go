package testbed

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// UnmanagedAnnotation marks a Pod that a test wires itself (AddPod,
// PreparePod): the pod runner of its node leaves it alone.
const UnmanagedAnnotation = "testbed.palisade.dev/unmanaged"

// PodIfName is the pod's interface, as a kubelet names it.
const PodIfName = "eth0"

const (
	// apiTimeout bounds one call to the API server from a helper.
	apiTimeout = 10 * time.Second
	// cniTimeout bounds one CNI verb of the whole chain. palisade's ADD may
	// wait for the agent's client timeout (agentapi: AddTimeout plus 5 s),
	// and the error should come from palisade, not from this deadline.
	cniTimeout = 30 * time.Second
)

// Pod is a pod of the testbed: an API object, a sandbox namespace wired by
// the node's CNI chain, and responders on its container ports.
type Pod struct {
	Name        string
	Namespace   string
	UID         string
	ContainerID string
	NetNS       *NetNS
	Node        *Node

	spec    *corev1.Pod
	wantIPs []netip.Addr // WithIP's addresses, if any
	cni     *libcni.CNIConfig
	list    *libcni.NetworkConfigList
	rt      *libcni.RuntimeConf

	mu          sync.Mutex
	listening   bool
	result      *current.Result
	resultVer   string // the version the chain answered ADD in
	ip          netip.Addr
	hostIfName  string
	hostIfIndex int
	hostNetwork bool // AddHostNetworkPod's: the node's netns and address
}

// AddPod does what a kubelet does for a pod bound to the node: creates the
// Pod object (spec.nodeName set to the node), runs the CNI chain for a new
// sandbox, writes the pod's IP and readiness to its status, and serves every
// containerPort. Any failure fails tb. Cleanup stops the responders, runs
// CNI DEL, deletes the sandbox and then the Pod object.
func (n *Node) AddPod(tb TB, pod *corev1.Pod, opts ...CNIOption) *Pod {
	tb.Helper()
	p := n.PreparePod(tb, pod, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	if err := p.CNIAdd(ctx); err != nil {
		tb.Fatal(err)
	}
	p.Serve(tb)
	return p
}

// PreparePod creates the Pod object and its sandbox namespace but runs no
// CNI verb, so a test can drive ADD, CHECK and DEL itself and look at their
// errors. Cleanup is AddPod's (a DEL on a sandbox that never got an ADD is
// what a runtime does too).
func (n *Node) PreparePod(tb TB, pod *corev1.Pod, opts ...CNIOption) *Pod {
	tb.Helper()
	created := n.createPod(tb, pod)
	p := &Pod{
		Name:        created.Name,
		Namespace:   created.Namespace,
		UID:         string(created.UID),
		ContainerID: randomHex(32),
		NetNS:       NewNetNS(tb, "pal-pod"),
		Node:        n,
		spec:        created,
	}
	noICMPRateLimit(tb, p.NetNS, n.DualStack)
	o := buildCNIOptions(opts)
	p.cni, p.list = n.cni(tb, o)
	p.rt = p.runtimeConf()
	if len(o.ips) > 0 {
		p.wantIPs = o.ips
		var ips []string
		for _, ip := range o.ips {
			ips = append(ips, ip.String())
		}
		p.rt.Args = append(p.rt.Args, [2]string{"IP", strings.Join(ips, ",")})
	}
	// Registered after NewNetNS, so it runs while the sandbox still exists.
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		defer cancel()
		if err := p.CNIDel(ctx); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	return p
}

// createPod creates pod, bound to n and left alone by its pod runner (the
// test wires it); cleanup deletes it.
func (n *Node) createPod(tb TB, pod *corev1.Pod) *corev1.Pod {
	tb.Helper()
	spec := pod.DeepCopy()
	spec.Spec.NodeName = n.Name
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	spec.Annotations[UnmanagedAnnotation] = "true"
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	pods := n.cp.Client.CoreV1().Pods(spec.Namespace)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	created, err := pods.Create(ctx, spec, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		// Zero grace: no kubelet will confirm the deletion of a bound pod.
		zero := int64(0)
		if err := pods.Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			tb.Errorf("delete pod %s/%s: %v", created.Namespace, created.Name, err)
		}
	})
	return created
}

// noICMPRateLimit lifts netns's ICMP rate limits: the target of a
// closed-port probe answers with ICMP port unreachable, and with a limit
// some such probes would time out instead of being refused.
func noICMPRateLimit(tb TB, netns *NetNS, dualStack bool) {
	tb.Helper()
	limits := []string{"net/ipv4/icmp_ratelimit"}
	if dualStack {
		limits = append(limits, "net/ipv6/icmp/ratelimit")
	}
	for _, key := range limits {
		if err := netns.Sysctl(key, "0"); err != nil {
			tb.Fatalf("%s: %v", netns.Name(), err)
		}
	}
}

// runtimeConf is what a kubelet (through the CRI runtime) hands libcni for
// the pod's sandbox, CNI_ARGS included.
func (p *Pod) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NetNS.Path(),
		IfName:      PodIfName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
			{"K8S_POD_UID", p.UID},
		},
		CapabilityArgs: portMappings(p.spec),
	}
}

func (p *Pod) String() string { return p.Namespace + "/" + p.Name }

// IP is the pod's address from the last successful ADD.
func (p *Pod) IP() netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ip
}

// ResultVersion is the CNI version the chain answered the last ADD in.
func (p *Pod) ResultVersion() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resultVer
}

// Result is the chain's result of the last successful ADD, converted to
// the current version.
func (p *Pod) Result() *current.Result {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.result
}

// HostVeth is the node-side end of the pod's veth, where Palisade attaches.
func (p *Pod) HostVeth() (ifName string, ifIndex int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hostIfName, p.hostIfIndex
}

// Object is the Pod as created in the API.
func (p *Pod) Object() *corev1.Pod { return p.spec.DeepCopy() }

// MakePod builds a one-container pod declaring ports, for AddPod. The image
// is never pulled: the testbed answers on the ports itself.
func MakePod(namespace, name string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10", Ports: ports}},
		},
	}
}

// Conflist is the chain the pod was wired with, as libcni loaded it: on a
// Flannel node, the bytes of the conf dir's file when the sandbox started.
func (p *Pod) Conflist() []byte { return slices.Clone(p.list.Bytes) }
