package adopt

import (
	"context"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/palisade-cni/palisade/daemon/endpoint"
)

// Unmanaged lists the pods of node that run without an endpoint: bound
// here, Running, on the pod network, with addresses in their status, none
// of which a registered endpoint holds. Such a pod started through a chain
// without palisade, as happens when the main CNI rewrites its conflist
// (Flannel does whenever its pod restarts) before install-cni puts
// palisade back.
func Unmanaged(pods []*corev1.Pod, node string, reg *endpoint.Manager) []*corev1.Pod {
	held := map[netip.Addr]bool{}
	for _, ep := range reg.List() {
		for _, ip := range ep.IPs {
			held[ip] = true
		}
	}
	var out []*corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName != node || p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning ||
			p.DeletionTimestamp != nil || len(p.Status.PodIPs) == 0 {
			continue
		}
		managed := false
		for _, pip := range p.Status.PodIPs {
			if ip, err := netip.ParseAddr(pip.IP); err == nil && held[ip] {
				managed = true
			}
		}
		if !managed {
			out = append(out, p)
		}
	}
	return out
}

// Sweeper adopts, from the runtime's CNI cache, the pods that run without
// an endpoint for longer than Grace: the agent's answer to pods that the
// runtime started while palisade was missing from the chain.
type Sweeper struct {
	Config
	// Every is how often it looks; Grace how long a pod may run without
	// an endpoint first (a pod's ADD registers before its status has IPs,
	// so a registered pod is never caught in between; the grace covers
	// the informer's lag).
	Every, Grace time.Duration
	// Report receives, after each sweep, how many pods still run without
	// an endpoint past the grace (palisade_unmanaged_pods).
	Report func(n int)

	seen map[types.UID]time.Time
}

// Run sweeps every s.Every until ctx ends.
func (s *Sweeper) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(s.Every):
		}
		s.Report(s.Sweep(ctx, time.Now()))
	}
}

// Sweep looks once at now: it adopts the pods unmanaged past the grace
// and returns how many are left unmanaged past it.
func (s *Sweeper) Sweep(ctx context.Context, now time.Time) int {
	if s.seen == nil {
		s.seen = map[types.UID]time.Time{}
	}
	due := s.due(now)
	if len(due) == 0 {
		return 0
	}
	for _, p := range due {
		s.Log.Warn("Pod running without Palisade; adopting it from the CNI cache",
			"pod", p.Namespace+"/"+p.Name, "since", s.seen[p.UID])
	}
	if _, err := Run(ctx, s.Config); err != nil {
		s.Log.Error("Adoption of unmanaged pods incomplete", "error", err)
	}
	left := s.due(now)
	for _, p := range left {
		s.Log.Error("Pod still runs without Palisade: no usable CNI cache entry; restart it to protect it",
			"pod", p.Namespace+"/"+p.Name)
	}
	return len(left)
}

// due returns the unmanaged pods first seen at least Grace before now, and
// forgets the pods that are no longer unmanaged.
func (s *Sweeper) due(now time.Time) []*corev1.Pod {
	all, err := s.Pods.List(labels.Everything())
	if err != nil {
		s.Log.Error("List pods to find unmanaged ones", "error", err)
		return nil
	}
	unmanaged := Unmanaged(all, s.NodeName, s.Endpoints)
	still := make(map[types.UID]time.Time, len(unmanaged))
	var due []*corev1.Pod
	for _, p := range unmanaged {
		first, ok := s.seen[p.UID]
		if !ok {
			first = now
		}
		still[p.UID] = first
		if now.Sub(first) >= s.Grace {
			due = append(due, p)
		}
	}
	s.seen = still
	return due
}
