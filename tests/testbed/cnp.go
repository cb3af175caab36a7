package testbed

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/daemon/k8s"
)

// clusterPolicyCRD is the ClusterNetworkPolicy CRD the manifests ship,
// relative to the module root.
const clusterPolicyCRD = "conf/kubernetes/crds/policy.networking.k8s.io_clusternetworkpolicies.yaml"

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallClusterPolicyCRD creates the ClusterNetworkPolicy CRD the
// manifests ship and waits until the API serves the resource. Call it
// before starting agents: an agent looks for the resource once, at start.
func (cp *ControlPlane) InstallClusterPolicyCRD(tb TB) {
	tb.Helper()
	root, err := moduleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	cp.InstallClusterPolicyCRDFile(tb, filepath.Join(root, clusterPolicyCRD))
}

// InstallClusterPolicyCRDFile is InstallClusterPolicyCRD with another
// copy of the CRD, such as the experimental channel's (a conformance
// catalog that probes experimental fields needs it: the standard CRD
// prunes them).
func (cp *ControlPlane) InstallClusterPolicyCRDFile(tb TB, path string) {
	tb.Helper()
	if err := cp.installCRD(path); err != nil {
		tb.Fatal(err)
	}
}

func (cp *ControlPlane) installCRD(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read CRD: %w", err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return fmt.Errorf("parse CRD %s: %w", path, err)
	}
	dyn, err := dynamic.NewForConfig(cp.RestConfig)
	if err != nil {
		return fmt.Errorf("create dynamic client: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := dyn.Resource(crdResource).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create CRD: %w", err)
	}
	for {
		ok, err := k8s.ServesClusterPolicies(cp.Client.Discovery())
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for ClusterNetworkPolicy to be served: %v (last error %v)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	cp.CNP, err = cnpclient.NewForConfig(cp.RestConfig)
	if err != nil {
		return fmt.Errorf("create ClusterNetworkPolicy client: %w", err)
	}
	return nil
}

// ApplyClusterPolicy creates a ClusterNetworkPolicy, deleted at cleanup.
func (cp *ControlPlane) ApplyClusterPolicy(tb TB, p *cnpv1.ClusterNetworkPolicy) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if _, err := cp.CNP.PolicyV1beta1().ClusterNetworkPolicies().Create(ctx, p, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create clusternetworkpolicy %s: %v", p.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		_ = cp.CNP.PolicyV1beta1().ClusterNetworkPolicies().Delete(ctx, p.Name, metav1.DeleteOptions{})
	})
}

// UpdateClusterPolicy changes a ClusterNetworkPolicy's spec.
func (cp *ControlPlane) UpdateClusterPolicy(tb TB, name string, change func(*cnpv1.ClusterNetworkPolicySpec)) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	cur, err := cp.CNP.PolicyV1beta1().ClusterNetworkPolicies().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		tb.Fatalf("get clusternetworkpolicy %s: %v", name, err)
	}
	change(&cur.Spec)
	if _, err := cp.CNP.PolicyV1beta1().ClusterNetworkPolicies().Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		tb.Fatalf("update clusternetworkpolicy %s: %v", name, err)
	}
}

// DeleteClusterPolicy deletes a ClusterNetworkPolicy.
func (cp *ControlPlane) DeleteClusterPolicy(tb TB, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := cp.CNP.PolicyV1beta1().ClusterNetworkPolicies().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		tb.Fatalf("delete clusternetworkpolicy %s: %v", name, err)
	}
}

// ClusterPolicy reads a ClusterNetworkPolicy, with its status.
func (cp *ControlPlane) ClusterPolicy(tb TB, name string) *cnpv1.ClusterNetworkPolicy {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	p, err := cp.CNP.PolicyV1beta1().ClusterNetworkPolicies().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		tb.Fatalf("get clusternetworkpolicy %s: %v", name, err)
	}
	return p
}
