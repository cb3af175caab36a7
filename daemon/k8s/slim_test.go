package k8s

import (
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var now = metav1.NewTime(time.Date(2026, 11, 30, 3, 4, 5, 0, time.UTC))

// kubeletPod is a pod as the API serves it once the kubelet runs it.
func kubeletPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web-0", Namespace: "prod", UID: "u1", ResourceVersion: "42", Generation: 3,
			CreationTimestamp: now, DeletionTimestamp: &now,
			Labels:          map[string]string{"app": "web"},
			Annotations:     map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{…}"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "web"}},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-1", HostNetwork: true,
			Volumes:        []corev1.Volume{{Name: "data"}},
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers: []corev1.Container{
				{Name: "web", Image: "nginx", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}},
				{Name: "log", Image: "fluentbit"},
				{Name: "metrics", Ports: []corev1.ContainerPort{{ContainerPort: 9090}}},
				{Name: "admin", Ports: []corev1.ContainerPort{{ContainerPort: 8081}, {Name: "admin", ContainerPort: 8082}}},
			},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "10.244.1.5", HostIP: "192.168.0.1",
			PodIPs:            []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::5"}},
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true}},
		},
	}
}

func TestSlimKeepsWhatPolicyReads(t *testing.T) {
	fatNode := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-1", ResourceVersion: "7", Labels: map[string]string{"zone": "a"}},
		Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}, ProviderID: "cloud://i-1"},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.1"}},
			Images:    []corev1.ContainerImage{{Names: []string{"registry.example/very/long/name:tag"}}},
		},
	}
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": `{"kind":"NetworkPolicy"}`}},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	tests := []struct {
		name     string
		in, want any
	}{
		{"pod", kubeletPod(), &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "prod", UID: "u1", ResourceVersion: "42", Generation: 3,
				CreationTimestamp: now, DeletionTimestamp: &now, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: "node-1", HostNetwork: true, Containers: []corev1.Container{
				{Name: "web", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}}},
				{Name: "admin", Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 8082}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5",
				PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}, {IP: "fd00::5"}}},
		}},
		{"node", fatNode, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "node-1", ResourceVersion: "7", Labels: map[string]string{"zone": "a"}},
			Spec:       corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.1"}}},
		}},
		{"other kinds lose only managed fields and annotations", pol, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Slim(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("Slim (-want +got):\n%s", d)
			}
		})
	}
}

// Pods with equal labels share one label map and one namespace string,
// pods with equal named ports one container list, and each stays what the
// pod had.
func TestSlimShares(t *testing.T) {
	mk := func(name string, l map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
		ns := string([]byte("prod")) // a string of its own, as decoding makes
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: l},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx", Ports: ports}}}}
	}
	slim := func(p *corev1.Pod) *corev1.Pod {
		out, err := Slim(p)
		if err != nil {
			t.Fatal(err)
		}
		return out.(*corev1.Pod)
	}
	http := corev1.ContainerPort{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}
	a := slim(mk("a", map[string]string{"app": "web", "tier": "f1"}, http, corev1.ContainerPort{ContainerPort: 9090}))
	b := slim(mk("b", map[string]string{"tier": "f1", "app": "web"}, http))
	c := slim(mk("c", map[string]string{"app": "web", "tier": "f2"}, corev1.ContainerPort{Name: "http", ContainerPort: 81, Protocol: corev1.ProtocolTCP}))
	d := slim(mk("d", map[string]string{"app": "web"}))
	if !sameMap(a.Labels, b.Labels) {
		t.Error("pods with equal labels do not share the map")
	}
	for _, p := range []*corev1.Pod{c, d} {
		if sameMap(a.Labels, p.Labels) {
			t.Errorf("pod %s shares the map of different labels %v", p.Name, a.Labels)
		}
	}
	if want := map[string]string{"app": "web", "tier": "f2"}; !cmp.Equal(c.Labels, want) {
		t.Errorf("labels of c = %v, want %v", c.Labels, want)
	}
	if want := []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{http}}}; !cmp.Equal(a.Spec.Containers, want) {
		t.Errorf("containers of a = %v, want %v", a.Spec.Containers, want)
	}
	if &a.Spec.Containers[0] != &b.Spec.Containers[0] {
		t.Error("pods with equal named ports do not share their containers")
	}
	if &a.Spec.Containers[0] == &c.Spec.Containers[0] || c.Spec.Containers[0].Ports[0].ContainerPort != 81 {
		t.Errorf("pod c shares the containers of different ports: %v", c.Spec.Containers)
	}
	if d.Spec.Containers != nil {
		t.Errorf("pod d without named ports keeps containers %v", d.Spec.Containers)
	}
	if unsafe.StringData(a.Namespace) != unsafe.StringData(b.Namespace) {
		t.Error("pods of one namespace do not share its name")
	}
}

// The interner starts over when full; objects slimmed before keep their
// labels.
func TestInternerBounded(t *testing.T) {
	li := &interner[map[string]string]{max: 2}
	share := func(l map[string]string) map[string]string { return li.share(labelKey(l), l) }
	first := share(map[string]string{"a": "1"})
	share(map[string]string{"a": "2"})
	share(map[string]string{"a": "3"}) // starts over
	if len(li.sets) != 1 {
		t.Errorf("table holds %d sets, want 1 after starting over", len(li.sets))
	}
	again := share(map[string]string{"a": "1"})
	if sameMap(first, again) {
		t.Error("a set from before the table started over is still shared")
	}
	if !cmp.Equal(first, again) || first["a"] != "1" {
		t.Errorf("labels changed: %v, %v", first, again)
	}
}

func sameMap(a, b map[string]string) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// Updates that slimming makes equal cost no sync; every field policy reads
// still does.
func TestSameButVersion(t *testing.T) {
	base := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", ResourceVersion: "1", Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}}},
		}
	}
	for _, tt := range []struct {
		name string
		edit func(*corev1.Pod)
		same bool
	}{
		{"resync", func(*corev1.Pod) {}, true},
		{"condition only", func(p *corev1.Pod) {
			p.ResourceVersion = "2"
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		}, true},
		{"label", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Labels["app"] = "db" }, false},
		{"address", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Status.PodIPs = nil }, false},
		{"phase", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Status.Phase = corev1.PodSucceeded }, false},
		{"named port", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.Spec.Containers[0].Ports[0].ContainerPort = 81 }, false},
		{"deleting", func(p *corev1.Pod) { p.ResourceVersion = "2"; p.DeletionTimestamp = &metav1.Time{} }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old, cur := base(), base()
			tt.edit(cur)
			o, _ := Slim(old)
			c, _ := Slim(cur)
			if got := SameButVersion(o, c); got != tt.same {
				t.Errorf("SameButVersion = %v, want %v", got, tt.same)
			}
			if o.(*corev1.Pod).ResourceVersion != "1" {
				t.Error("SameButVersion changed the cached object")
			}
		})
	}
	if SameButVersion("a", "a") {
		t.Error("objects without metadata compare as unchanged")
	}
}
