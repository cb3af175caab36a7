package nodestatus

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestPublishThenList(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", UID: "uid-1"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-3"}},
	)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sync := time.Date(2026, 12, 5, 21, 0, 0, 0, time.UTC)
	p1 := &Publisher{Client: client, Namespace: "palisade-system", Node: "node-1", Duration: 40 * time.Second, Log: log}
	first := Summary{Version: "v1", Ready: false, Reason: "waiting for the first policy sync", AttachMode: "tcx"}
	if err := p1.Publish(ctx, first); err != nil {
		t.Fatal(err)
	}
	second := Summary{Version: "v1", Ready: true, AttachMode: "tcx", Endpoints: 4, Policies: 2, Unmanaged: 1, Revision: 7, LastSync: sync}
	if err := p1.Publish(ctx, second); err != nil {
		t.Fatal(err)
	}
	p2 := &Publisher{Client: client, Namespace: "palisade-system", Node: "node-2", Duration: 40 * time.Second, Log: log}
	if err := p2.Publish(ctx, Summary{Version: "v1", Ready: true}); err != nil {
		t.Fatal(err)
	}
	// A Lease in another namespace is not this cluster's agents'.
	p3 := &Publisher{Client: client, Namespace: "elsewhere", Node: "node-3", Log: log}
	if err := p3.Publish(ctx, Summary{Ready: true}); err != nil {
		t.Fatal(err)
	}

	l, err := client.CoordinationV1().Leases("palisade-system").Get(ctx, "palisade-agent-node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Annotations[annoReason]; ok {
		t.Error("the reason of the first summary outlived it")
	}
	if len(l.OwnerReferences) != 1 || l.OwnerReferences[0].UID != "uid-1" {
		t.Errorf("owner references %v, want node-1's", l.OwnerReferences)
	}

	// Just after: both current. 50s later: both stale.
	renewed := l.Spec.RenewTime.Time
	got, err := List(ctx, client, "palisade-system", renewed.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	second.Node = "node-1"
	want := []NodeStatus{
		{Summary: second, Renewed: renewed},
		{Summary: Summary{Node: "node-2", Version: "v1", Ready: true}},
		{Summary: Summary{Node: "node-3"}, NoAgent: true},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
		cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Renewed" }, cmp.Ignore())); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	if !got[0].Healthy() || got[2].Healthy() {
		t.Errorf("healthy: %v %v, want node-1 healthy and node-3 (no agent) not", got[0].Healthy(), got[2].Healthy())
	}
	later, err := List(ctx, client, "palisade-system", renewed.Add(50*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !later[0].Stale || later[0].Healthy() || !later[0].Ready {
		t.Errorf("50s after the renewal of a 40s lease: stale %v healthy %v ready %v, want stale, not healthy, last summary kept",
			later[0].Stale, later[0].Healthy(), later[0].Ready)
	}
}

func TestRunSaysStoppedWhenItEnds(t *testing.T) {
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{Client: client, Namespace: "ns", Node: "n", Every: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Summary: func() Summary { return Summary{Ready: true, Version: "v2"} }}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	// Wait for the first renewal, then stop.
	for {
		if _, err := client.CoordinationV1().Leases("ns").Get(context.Background(), LeaseName("n"), metav1.GetOptions{}); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	sts, err := List(context.Background(), client, "ns", time.Now())
	if err != nil || len(sts) != 1 {
		t.Fatalf("List: %v %v", sts, err)
	}
	if sts[0].Ready || sts[0].Reason == "" || sts[0].Version != "v2" {
		t.Errorf("after Run ended: %+v, want not ready with a reason", sts[0])
	}
}

func TestDecodeRejectsBadAnnotations(t *testing.T) {
	l := leaseOf(t, Summary{Node: "n", Ready: true})
	l.Annotations[annoEndpoints] = "many"
	if _, err := Decode(l, time.Now()); err == nil {
		t.Error("an endpoint count of \"many\" decoded without error")
	}
}

func TestLeaseNameFitsLongNodeNames(t *testing.T) {
	long := ""
	for len(long) < 253 {
		long += "a."
	}
	long = long[:253]
	if n := LeaseName(long); len(n) > 253 || n[len(n)-1] == '.' {
		t.Errorf("LeaseName of a 253-character node: %d characters, ends %q", len(n), n[len(n)-1:])
	}
}

func leaseOf(t *testing.T, s Summary) *coordinationv1.Lease {
	t.Helper()
	client := fake.NewClientset()
	p := &Publisher{Client: client, Namespace: "ns", Node: s.Node}
	if err := p.Publish(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	l, err := client.CoordinationV1().Leases("ns").Get(context.Background(), LeaseName(s.Node), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l
}
