package nodestatus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// List reads every agent's status from the Leases in namespace, one entry
// per node sorted by name. Nodes without a Lease are listed as NoAgent when
// the caller may list Nodes; without that permission only the Leases show.
func List(ctx context.Context, client kubernetes.Interface, namespace string, now time.Time) ([]NodeStatus, error) {
	leases, err := client.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{LabelSelector: ComponentLabel + "=" + ComponentValue})
	if err != nil {
		return nil, fmt.Errorf("list agent leases in namespace %s: %w", namespace, err)
	}
	var out []NodeStatus
	var errs []error
	have := map[string]bool{}
	for i := range leases.Items {
		st, err := Decode(&leases.Items[i], now)
		if err != nil {
			errs = append(errs, err)
		}
		have[st.Node] = true
		out = append(out, st)
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	switch {
	case err == nil:
		for _, n := range nodes.Items {
			if !have[n.Name] {
				out = append(out, NodeStatus{Summary: Summary{Node: n.Name}, NoAgent: true})
			}
		}
	case apierrors.IsForbidden(err):
	default:
		errs = append(errs, fmt.Errorf("list nodes: %w", err))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out, errors.Join(errs...)
}
