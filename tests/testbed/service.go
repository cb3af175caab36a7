package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ServicePort is one port of a Service: Port on the ClusterIP, forwarded to
// Target on the backends (a number, or a containerPort's name).
type ServicePort struct {
	Name     string
	Protocol corev1.Protocol
	Port     int32
	Target   intstr.IntOrString
}

// CreateService creates a ClusterIP Service selecting pods by selector and
// returns its ClusterIP; kube-controller-manager (StartControllerManager)
// writes its EndpointSlices. Cleanup deletes it.
func (cp *ControlPlane) CreateService(tb TB, namespace, name string, selector map[string]string, ports ...ServicePort) netip.Addr {
	tb.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.ServiceSpec{Selector: selector},
	}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: p.Target})
	}
	return cp.createService(tb, svc)
}

// createService creates svc, deleted at cleanup, and returns its ClusterIP.
func (cp *ControlPlane) createService(tb TB, svc *corev1.Service) netip.Addr {
	tb.Helper()
	services := cp.Client.CoreV1().Services(svc.Namespace)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	created, err := services.Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		_ = services.Delete(ctx, svc.Name, metav1.DeleteOptions{})
	})
	ip, err := netip.ParseAddr(created.Spec.ClusterIP)
	if err != nil {
		tb.Fatalf("service %s/%s: clusterIP %q: %v", svc.Namespace, svc.Name, created.Spec.ClusterIP, err)
	}
	return ip
}

// CreateServiceTo creates a selector-less ClusterIP Service of backend's
// address family and an EndpointSlice naming backend, as the EndpointSlice
// controller would, so that no controller needs to run and an IPv6
// address (which pod status does not carry here) can be a backend. It
// returns the ClusterIP. Cleanup deletes both.
func (cp *ControlPlane) CreateServiceTo(tb TB, namespace, name string, backend netip.Addr, ports ...ServicePort) netip.Addr {
	tb.Helper()
	family, addrType := corev1.IPv4Protocol, discoveryv1.AddressTypeIPv4
	if backend.Is6() {
		family, addrType = corev1.IPv6Protocol, discoveryv1.AddressTypeIPv6
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.ServiceSpec{IPFamilies: []corev1.IPFamily{family}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: addrType,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{backend.String()}}},
	}
	for _, p := range ports {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port, TargetPort: p.Target})
		target := p.Target.IntVal
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: &p.Name, Port: &target, Protocol: &p.Protocol})
	}
	ip := cp.createService(tb, svc)
	slices := cp.Client.DiscoveryV1().EndpointSlices(namespace)
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("create endpointslice of service %s/%s: %v", namespace, name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		_ = slices.Delete(ctx, slice.Name, metav1.DeleteOptions{})
	})
	return ip
}

// WaitEndpoints waits until the Service's EndpointSlices list want ready
// endpoints in total.
func (cp *ControlPlane) WaitEndpoints(ctx context.Context, namespace, name string, want int) error {
	var got int
	for {
		slices, err := cp.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
		if err == nil {
			got = 0
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					if e.Conditions.Ready == nil || *e.Conditions.Ready {
						got++
					}
				}
			}
			if got == want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d endpoints of service %s/%s: have %d: %w", want, namespace, name, got, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
