package k8s

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Slim is the informers' transform. Every agent caches every pod and node
// of the cluster, and a pod as the kubelet writes it (volumes, env,
// container statuses, conditions) or a node (its image list) is mostly
// what no policy reads: at 10 000 pods that is most of the agent's memory.
// Pods and nodes keep only the fields Palisade reads; everything else only
// loses its managed fields and annotations. A field the agent starts to
// read must be added here (slim_test.go lists them). Pods and nodes with
// equal labels share one label map, and their namespace and node names one
// string.
func Slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return slimPod(o), nil
	case *corev1.Node:
		return slimNode(o), nil
	}
	// No kind's annotations are read, and kubectl apply's
	// last-applied-configuration repeats the whole object in one.
	if acc, err := meta.Accessor(obj); err == nil {
		acc.SetManagedFields(nil)
		acc.SetAnnotations(nil)
	}
	return obj, nil
}

func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: intern(m.Namespace), UID: m.UID, ResourceVersion: m.ResourceVersion,
		Generation: m.Generation, CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp, Labels: shareLabels(m.Labels),
	}
}

// intern returns the one copy of s that every slimmed object shares: a
// namespace or node name is repeated in thousands of pods.
func intern(s string) string {
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}

// labelSets holds one label map per distinct label set of the cached
// pods and nodes, and containerSets one list of named ports per distinct
// list. Pods of one ReplicaSet or StatefulSet mostly carry the same labels
// and ports; a small map with its strings costs ~0.5 KB per pod, a
// container ~0.5 KB (together ~10 MB of the heap at 10 000 pods). Both are
// shared, so nothing may modify a cached object's labels or containers; no
// code does (informer objects are read-only already).
var (
	labelSets     = &interner[map[string]string]{max: 1 << 14}
	containerSets = &interner[[]corev1.Container]{max: 1 << 14}
)

// interner hands out one shared value per key.
type interner[T any] struct {
	mu   sync.Mutex
	sets map[string]T
	// max bounds the table, which keeps the values of deleted objects
	// alive: when full it starts over, and objects cached before keep
	// theirs, only unshared with the ones that come after.
	max int
}

// share returns the value shared under key, making v that value when it
// is the first of its key. The informer hands the transform a freshly
// decoded object, so v is not referenced elsewhere.
func (in *interner[T]) share(key string, v T) T {
	in.mu.Lock()
	defer in.mu.Unlock()
	if m, ok := in.sets[key]; ok {
		return m
	}
	if in.sets == nil || len(in.sets) >= in.max {
		in.sets = map[string]T{}
	}
	in.sets[key] = v
	return v
}

// shareLabels returns a map equal to l that objects with equal labels share.
func shareLabels(l map[string]string) map[string]string {
	if len(l) == 0 {
		return l
	}
	return labelSets.share(labelKey(l), l)
}

// labelKey is l as a string, the same for equal sets. Label keys and
// values cannot hold a NUL byte, so it cannot be ambiguous.
func labelKey(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(l[k])
		b.WriteByte(0)
	}
	return b.String()
}

// slimPod keeps identity (namespace, labels), placement, addresses, phase
// and the container ports that named ports resolve against.
func slimPod(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{
		TypeMeta:   p.TypeMeta,
		ObjectMeta: slimMeta(p.ObjectMeta),
		Spec:       corev1.PodSpec{NodeName: intern(p.Spec.NodeName), HostNetwork: p.Spec.HostNetwork},
		Status:     corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	// podIP is podIPs[0]: one string for both.
	if len(out.Status.PodIPs) > 0 && out.Status.PodIPs[0].IP == out.Status.PodIP {
		out.Status.PodIP = out.Status.PodIPs[0].IP
	}
	out.Spec.Containers = namedPorts(p.Spec.Containers)
	return out
}

// namedPorts returns the containers with their named ports only, shared
// with the pods that have the same. Only named ports are read (a policy's
// port by name); a container without one costs its 400-byte struct for
// nothing.
func namedPorts(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	var key strings.Builder
	for _, c := range cs {
		var named []corev1.ContainerPort
		for _, cp := range c.Ports {
			if cp.Name == "" {
				continue
			}
			named = append(named, cp)
			// Port names, protocols and host IPs hold no NUL byte.
			for _, f := range []string{cp.Name, string(cp.Protocol), strconv.Itoa(int(cp.ContainerPort)), strconv.Itoa(int(cp.HostPort)), cp.HostIP} {
				key.WriteString(f)
				key.WriteByte(0)
			}
		}
		if len(named) > 0 {
			out = append(out, corev1.Container{Name: c.Name, Ports: named})
			key.WriteString(c.Name)
			key.WriteByte(1)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return containerSets.share(key.String(), out)
}

// slimNode keeps the node's addresses, which are the host identity, and
// its pod CIDRs: their gateway addresses route to it (service.NodeAddrs)
// and their first address is its Flannel VXLAN address (controller).
func slimNode(n *corev1.Node) *corev1.Node {
	return &corev1.Node{
		TypeMeta:   n.TypeMeta,
		ObjectMeta: slimMeta(n.ObjectMeta),
		Spec:       corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
		Status:     corev1.NodeStatus{Addresses: n.Status.Addresses},
	}
}
