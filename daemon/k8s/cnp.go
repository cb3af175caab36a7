package k8s

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
)

// ProgrammedCondition is the status condition the agents set on every
// ClusterNetworkPolicy: True when it was understood whole and is enforced,
// False with what could not be understood (those parts fail closed).
const ProgrammedCondition = "palisade.dev/Programmed"

// ServesClusterPolicies reports whether the API serves ClusterNetworkPolicy
// v1beta1: without its CRD the agent runs without the admin tiers, as an
// informer on a missing resource would never sync.
func ServesClusterPolicies(d discovery.DiscoveryInterface) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(cnpv1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", cnpv1.GroupVersion, err)
	}
	for _, r := range list.APIResources {
		if r.Name == "clusternetworkpolicies" {
			return true, nil
		}
	}
	return false, nil
}

// StatusWriter sets the Programmed condition of cluster policies.
type StatusWriter struct {
	Client cnpclient.Interface
}

// SetProgrammed writes the condition on p (a cached object: it is copied)
// unless it already says the same. Every agent computes the same
// condition, so their writes agree; a conflict means another agent or a
// change came first, and the next sync looks again.
func (w StatusWriter) SetProgrammed(ctx context.Context, p *cnpv1.ClusterNetworkPolicy, problems []string) error {
	cond := metav1.Condition{Type: ProgrammedCondition, Status: metav1.ConditionTrue, Reason: "Programmed",
		Message: "enforced by palisade", ObservedGeneration: p.Generation}
	if len(problems) > 0 {
		cond.Status, cond.Reason = metav1.ConditionFalse, "PartsFailClosed"
		cond.Message = fmt.Sprintf("enforced fail-closed where not understood: %v", problems)
		if len(cond.Message) > 1024 {
			cond.Message = cond.Message[:1021] + "..."
		}
	}
	if cur := meta.FindStatusCondition(p.Status.Conditions, ProgrammedCondition); cur != nil &&
		cur.Status == cond.Status && cur.Reason == cond.Reason && cur.Message == cond.Message && cur.ObservedGeneration == cond.ObservedGeneration {
		return nil
	}
	p = p.DeepCopy()
	meta.SetStatusCondition(&p.Status.Conditions, cond)
	_, err := w.Client.PolicyV1beta1().ClusterNetworkPolicies().UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
		return fmt.Errorf("update status of clusternetworkpolicy %s: %w", p.Name, err)
	}
	return nil
}
