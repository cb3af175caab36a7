package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/palisade-cni/palisade/daemon/k8s"
)

// What a catalog's apply and delete steps may carry, by apiVersion and
// kind: a networking.k8s.io/v1 NetworkPolicy (the default when a step
// names neither) or a policy.networking.k8s.io/v1beta1
// ClusterNetworkPolicy (the catalog of sigs.k8s.io/network-policy-api's
// conformance suite, tests/conformance/network-policy-api).
const (
	kindNetworkPolicy = "NetworkPolicy"
	kindCNP           = "ClusterNetworkPolicy"
)

var cnpAPIVersion = cnpv1.SchemeGroupVersion.String()

// checkApplyKind reports an apply step whose object the runner cannot
// create: a kind other than the two policies, or the wrong apiVersion for
// a ClusterNetworkPolicy.
func checkApplyKind(obj map[string]any) error {
	kind, _ := obj["kind"].(string)
	apiVersion, _ := obj["apiVersion"].(string)
	switch kind {
	case "", kindNetworkPolicy:
		return nil
	case kindCNP:
		if apiVersion != cnpAPIVersion {
			return fmt.Errorf("apply: ClusterNetworkPolicy apiVersion %q is not supported by this runner (want %s)", apiVersion, cnpAPIVersion)
		}
		return nil
	default:
		return fmt.Errorf("apply: kind %q is not supported by this runner", kind)
	}
}

// checkDelete reports a delete step the runner cannot do.
func checkDelete(r ObjectRef) error {
	switch r.Kind {
	case "", kindNetworkPolicy:
		if r.Namespace == "" {
			return fmt.Errorf("delete: a NetworkPolicy needs a namespace")
		}
	case kindCNP:
		if r.Namespace != "" {
			return fmt.Errorf("delete: a ClusterNetworkPolicy has no namespace (got %q)", r.Namespace)
		}
	default:
		return fmt.Errorf("delete: kind %q is not supported by this runner", r.Kind)
	}
	if r.Name == "" {
		return fmt.Errorf("delete: no name")
	}
	return nil
}

// checkListedPairs checks a "listed" probe: some pairs, each of pods alive
// at this step. The pairs it does not list are not asserted.
func checkListedPairs(st *caseState, p *Probe) error {
	if len(p.ExpectedExtra) > 0 {
		return fmt.Errorf("probe %s/%d: a listed probe names every pair in expected, not expected_extra", p.Protocol, p.Port)
	}
	n := 0
	for from, row := range p.Expected {
		for to := range row {
			if !st.alive(from) || !st.alive(to) {
				return fmt.Errorf("probe %s/%d: expected[%s][%s] names a pod not alive at this step", p.Protocol, p.Port, from, to)
			}
			if from == to && p.IgnoreLoopback {
				return fmt.Errorf("probe %s/%d: expected[%s][%s] lists a loopback pair the probe ignores", p.Protocol, p.Port, from, to)
			}
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("probe %s/%d: a listed probe lists no pair", p.Protocol, p.Port)
	}
	return nil
}

// pairsToProbe are the pairs of the alive pods (in order) that a probe
// step probes and judges: all of them (but loopback when ignored), or for
// a "listed" probe those in Expected. notAsserted counts the pairs a
// listed probe leaves out; they are reported as such, never as passing.
func (p *Probe) pairsToProbe(order []string) (pending []pair, notAsserted int) {
	for _, from := range order {
		for _, to := range order {
			if from == to && p.IgnoreLoopback {
				continue
			}
			if _, listed := p.Expected[from][to]; !listed && p.Pairs == "listed" {
				notAsserted++
				continue
			}
			pending = append(pending, pair{from, to})
		}
	}
	return pending, notAsserted
}

// isClusterPolicy reports whether an apply step carries a
// ClusterNetworkPolicy.
func isClusterPolicy(raw json.RawMessage) bool {
	var tm metav1.TypeMeta
	return json.Unmarshal(raw, &tm) == nil && tm.Kind == kindCNP
}

// decodeClusterPolicy decodes a ClusterNetworkPolicy as strictly as the
// API server's schema: a field the type does not have is an error, not
// dropped.
func decodeClusterPolicy(data []byte) (*cnpv1.ClusterNetworkPolicy, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var p cnpv1.ClusterNetworkPolicy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decode clusternetworkpolicy: %w", err)
	}
	if p.APIVersion != cnpAPIVersion {
		return nil, fmt.Errorf("decode clusternetworkpolicy %s: apiVersion %q, want %s", p.Name, p.APIVersion, cnpAPIVersion)
	}
	return &p, nil
}

// applyClusterPolicy creates (or, with update, replaces the spec of) a
// ClusterNetworkPolicy from an apply step, its templates filled from the
// live pods ({{hostCIDR ns/pod}} in networks peers).
func (e *Env) applyClusterPolicy(ctx context.Context, raw json.RawMessage, mode string) error {
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("decode clusternetworkpolicy: %w", err)
	}
	filled, err := fillTemplates(doc, e.podIP)
	if err != nil {
		return err
	}
	data, err := json.Marshal(filled)
	if err != nil {
		return fmt.Errorf("encode clusternetworkpolicy: %w", err)
	}
	pol, err := decodeClusterPolicy(data)
	if err != nil {
		return err
	}
	api := e.CP.CNP.PolicyV1beta1().ClusterNetworkPolicies()
	var gen int64
	if mode == "update" {
		// A full replacement of the spec, as upstream's
		// PatchClusterNetworkPolicy (a merge patch of the whole object).
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := api.Get(ctx, pol.Name, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("update clusternetworkpolicy %s: %w", pol.Name, err)
			}
			cur.Spec = pol.Spec
			up, err := api.Update(ctx, cur, metav1.UpdateOptions{})
			if err != nil {
				return fmt.Errorf("update clusternetworkpolicy %s: %w", pol.Name, err)
			}
			gen = up.Generation
			return nil
		})
		if err != nil {
			return err
		}
	} else {
		made, err := api.Create(ctx, pol, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create clusternetworkpolicy %s: %w", pol.Name, err)
		}
		gen = made.Generation
	}
	return e.waitProgrammed(ctx, pol.Name, gen)
}

// waitProgrammed waits until an agent has set the Programmed condition
// for generation gen of the policy (True, or False with the parts that
// fail closed). Without it the probes that follow, which retry until they
// see the expected verdict, could pass on the state before the change
// when it happens to give that verdict: a policy whose Accept the
// datapath got wrong would pass a probe made before it was enforced.
// The condition is one for all agents (they compute the same), so this
// proves that one agent enforces the generation; the others follow the
// same informer events.
func (e *Env) waitProgrammed(ctx context.Context, name string, gen int64) error {
	api := e.CP.CNP.PolicyV1beta1().ClusterNetworkPolicies()
	for {
		cur, err := api.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("wait for clusternetworkpolicy %s to be programmed: %w", name, err)
		}
		if c := meta.FindStatusCondition(cur.Status.Conditions, k8s.ProgrammedCondition); c != nil && c.ObservedGeneration >= gen {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("clusternetworkpolicy %s generation %d: no agent set %s: %w", name, gen, k8s.ProgrammedCondition, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// deleteClusterPolicy is a delete step of a ClusterNetworkPolicy.
func (e *Env) deleteClusterPolicy(ctx context.Context, name string) error {
	if err := e.CP.CNP.PolicyV1beta1().ClusterNetworkPolicies().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete clusternetworkpolicy %s: %w", name, err)
	}
	return nil
}

// deleteClusterPolicies removes every ClusterNetworkPolicy: part of the
// reset after a case, as the namespaced policies are.
func (e *Env) deleteClusterPolicies(ctx context.Context) error {
	api := e.CP.CNP.PolicyV1beta1().ClusterNetworkPolicies()
	list, err := api.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list clusternetworkpolicies: %w", err)
	}
	for _, p := range list.Items {
		if err := api.Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete clusternetworkpolicy %s: %w", p.Name, err)
		}
	}
	return nil
}
