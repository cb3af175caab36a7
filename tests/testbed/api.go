package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// TCP and UDP declare a named containerPort ("tcp-80", "udp-53").
func TCP(port int32) corev1.ContainerPort { return containerPort(corev1.ProtocolTCP, port) }
func UDP(port int32) corev1.ContainerPort { return containerPort(corev1.ProtocolUDP, port) }

func containerPort(proto corev1.Protocol, port int32) corev1.ContainerPort {
	name := fmt.Sprintf("%s-%d", map[corev1.Protocol]string{corev1.ProtocolTCP: "tcp", corev1.ProtocolUDP: "udp"}[proto], port)
	return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: proto}
}

// CreateNamespace creates a namespace with labels; cleanup deletes it.
func (cp *ControlPlane) CreateNamespace(tb TB, name string, labels map[string]string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create namespace %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		_ = cp.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
}

// ReadPolicy decodes a NetworkPolicy from a YAML file.
func ReadPolicy(tb TB, path string) *networkingv1.NetworkPolicy {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read policy: %v", err)
	}
	pol, err := DecodePolicy(data)
	if err != nil {
		tb.Fatalf("decode policy %s: %v", path, err)
	}
	return pol
}

// DecodePolicy decodes NetworkPolicy YAML as strictly as the API server: a
// field the API does not have, or one spelt with other capitals (the seeds'
// NamespaceSelector), is an error, never silently dropped or matched.
func DecodePolicy(data []byte) (*networkingv1.NetworkPolicy, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	var pol networkingv1.NetworkPolicy
	strict, err := sigsjson.UnmarshalStrict(js, &pol)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(strict...); err != nil {
		return nil, err
	}
	return &pol, nil
}

// ApplyPolicy creates the policy in file path in namespace and returns its
// name; cleanup deletes it if the test has not.
func (cp *ControlPlane) ApplyPolicy(tb TB, namespace, path string) string {
	tb.Helper()
	pol := ReadPolicy(tb, path)
	pol.Namespace = namespace
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if _, err := cp.Client.NetworkingV1().NetworkPolicies(namespace).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create networkpolicy %s/%s: %v", namespace, pol.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		_ = cp.Client.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, pol.Name, metav1.DeleteOptions{})
	})
	return pol.Name
}

// DeletePolicy deletes a NetworkPolicy.
func (cp *ControlPlane) DeletePolicy(tb TB, namespace, name string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if err := cp.Client.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		tb.Fatalf("delete networkpolicy %s/%s: %v", namespace, name, err)
	}
}

// SetPodLabels replaces the labels of a pod's object.
func (cp *ControlPlane) SetPodLabels(tb TB, p *Pod, labels map[string]string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		obj, err := cp.Client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		obj.Labels = labels
		_, err = cp.Client.CoreV1().Pods(p.Namespace).Update(ctx, obj, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		tb.Fatalf("relabel pod %s: %v", p, err)
	}
}
