package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// peerLabel is the namespace label whose presence admits the measured
// namespace's clients in the namespace-label propagation test.
const peerLabel = "bench.palisade.dev/peer"

// AllowIngressFromLabelledNamespace lets clients reach the server's
// measured ports only while their namespace carries peerLabel=on.
func AllowIngressFromLabelledNamespace(namespace string) *networkingv1.NetworkPolicy {
	p := AllowIngress(namespace)
	p.Name = "allow-bench-in-ns"
	p.Spec.Ingress[0].From[0].NamespaceSelector = sel(peerLabel, "on")
	return p
}

// namespaceLabelPropagation times a namespace label change, which
// propagation() does not: with the ingress allowed only from namespaces
// labelled peerLabel=on, it labels and unlabels the measured namespace
// (client and server share it) until the probe sees the new verdict. It
// needs propagation()'s default deny and egress allow in force and its
// ingress allow deleted, as propagation() leaves them.
func namespaceLabelPropagation(t *testing.T, c *testbed.Cluster, m *measured, policies int) []PropagationRow {
	ctx := context.Background()
	allow := AllowIngressFromLabelledNamespace(m.namespace)
	createPolicy(t, c, allow)
	nps := c.Client.NetworkingV1().NetworkPolicies(m.namespace)
	t.Cleanup(func() { _ = nps.Delete(ctx, allow.Name, metav1.DeleteOptions{}) })
	t.Cleanup(func() { _ = setNamespaceLabel(ctx, c, m.namespace, "") })
	prober := &prober{from: m.cross, to: m.server.IP()}
	if err := prober.await(false, time.Now()); err != nil {
		t.Fatalf("namespace unlabelled: %v", err)
	}
	// Labelling admits the clients, unlabelling shuts them out again.
	events := []struct {
		name, value string
	}{{"namespace label (allow)", "on"}, {"namespace label (deny)", ""}}
	pods := countPods(t, c)
	rows := make([]PropagationRow, len(events))
	for i, ev := range events {
		rows[i] = PropagationRow{Policies: policies + 1, Pods: pods, Event: ev.name}
	}
	times := make([][]time.Duration, len(events))
	for range *flagScaleIters {
		for i, ev := range events {
			if err := setNamespaceLabel(ctx, c, m.namespace, ev.value); err != nil {
				t.Fatalf("%s: %v", ev.name, err)
			}
			acked := time.Now()
			if err := prober.await(ev.value != "", acked); err != nil {
				t.Errorf("%s: %v", ev.name, err)
				rows[i].Failures++
				continue
			}
			times[i] = append(times[i], prober.seen.Sub(acked))
		}
	}
	for i := range rows {
		d := times[i]
		rows[i].N, rows[i].P50ms, rows[i].P99ms, rows[i].MaxMs = len(d), Millis(Percentile(d, 50)), Millis(Percentile(d, 99)), Millis(Percentile(d, 100))
	}
	return rows
}

// setNamespaceLabel sets peerLabel on namespace ns to value, or removes it
// when value is "".
func setNamespaceLabel(ctx context.Context, c *testbed.Cluster, ns, value string) error {
	nss := c.Client.CoreV1().Namespaces()
	cur, err := nss.Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get namespace %s: %w", ns, err)
	}
	if value == "" {
		delete(cur.Labels, peerLabel)
	} else {
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		cur.Labels[peerLabel] = value
	}
	if _, err := nss.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("label namespace %s %s=%q: %w", ns, peerLabel, value, err)
	}
	return nil
}
