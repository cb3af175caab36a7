package policyevents

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/palisade-cni/palisade/daemon/policy"
)

func TestOneEventPerProblemAcrossAgents(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bad := &policy.Problem{Namespace: "prod", Name: "allow-db", UID: "u1", Message: `ipBlock "010.0.0.0/8" is not a CIDR`}
	other := &policy.Problem{Namespace: "prod", Name: "allow-db", UID: "u1", Message: "port 0-0 is not a valid range"}
	problems := []error{bad, errors.New("not a policy's"), other}

	a := &Reporter{Client: client, Node: "node-1", Log: log}
	if n, err := a.Report(ctx, problems); n != 2 || err != nil {
		t.Fatalf("first report created %d (%v), want 2", n, err)
	}
	// The next sync of the same agent, and another node's agent.
	if n, err := a.Report(ctx, problems); n != 0 || err != nil {
		t.Errorf("second report of the same problems created %d (%v), want 0", n, err)
	}
	b := &Reporter{Client: client, Node: "node-2", Log: log}
	if n, err := b.Report(ctx, problems); n != 0 || err != nil {
		t.Errorf("another agent created %d (%v), want 0", n, err)
	}
	evs, err := client.CoreV1().Events("prod").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs.Items) != 2 {
		t.Fatalf("%d events, want 2", len(evs.Items))
	}
	for _, ev := range evs.Items {
		if ev.Reason != Reason || ev.Type != "Warning" || ev.InvolvedObject.Kind != "NetworkPolicy" ||
			ev.InvolvedObject.Name != "allow-db" || ev.InvolvedObject.UID != "u1" || !strings.Contains(ev.Message, "matches nothing") {
			t.Errorf("event %+v", ev)
		}
	}
	// A new policy of the same name (another UID) is reported again.
	again := *bad
	again.UID = "u2"
	if n, _ := b.Report(ctx, []error{&again}); n != 1 {
		t.Errorf("the problem of a recreated policy created %d events, want 1", n)
	}
}

// Watch reports a new Result's problems, and does not keep that Result
// alive once the agent has replaced it, though it looks again only every
// so often.
func TestWatchKeepsNoReplacedResult(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	r := &Reporter{Client: client, Node: "node-1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var mu sync.Mutex
	cur := &policy.Result{Problems: []error{&policy.Problem{Namespace: "prod", Name: "a", UID: "a", Message: "port 0-0 is not a valid range"}}}
	collected := make(chan struct{})
	runtime.AddCleanup(cur, func(c chan struct{}) { close(c) }, collected)
	last := func() *policy.Result {
		mu.Lock()
		defer mu.Unlock()
		return cur
	}
	// One check now, the next in an hour.
	go r.Watch(ctx, last, time.Hour)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := client.CoreV1().Events("prod").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events for the first Result, want 1", len(l.Items))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The agent replaces the Result: nothing but Watch could keep the old
	// one now.
	mu.Lock()
	cur = &policy.Result{}
	mu.Unlock()
	for range 200 {
		runtime.GC()
		select {
		case <-collected:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Fatal("the replaced Result is still alive: Watch keeps it until its next check")
}
