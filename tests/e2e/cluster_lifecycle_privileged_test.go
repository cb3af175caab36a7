package e2e

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// TestPrivilegedHairpinThroughOwnService: a pod reaching itself through its
// own Service. Palisade leaves that translation to kube-proxy (it needs
// source NAT too), and a pod's traffic with itself is never blocked, even
// under a default deny in both directions.
func TestPrivilegedHairpinThroughOwnService(t *testing.T) {
	privileged.Require(t)
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 1})
	c.CreateNamespace(t, "prod", nil)
	web := c.RunPod(t, testbed.MakePod("prod", "web", map[string]string{"app": "web"}, testbed.TCP(8080)))
	vip := c.CreateService(t, "prod", "web", map[string]string{"app": "web"},
		testbed.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, Target: intstr.FromInt32(8080)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.WaitEndpoints(ctx, "prod", "web", 1); err != nil {
		t.Fatal(err)
	}
	probeUntil(t, web, vip, 80, corev1.ProtocolTCP, testbed.Connected, "web")
	c.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "default-deny.yaml"))
	other := c.RunPod(t, testbed.MakePod("prod", "other", nil))
	probeUntil(t, other, vip, 80, corev1.ProtocolTCP, testbed.TimedOut, "")
	probeUntil(t, web, vip, 80, corev1.ProtocolTCP, testbed.Connected, "web")
}

// TestPrivilegedNamespaceDeletion: when a namespace goes, its pods leave
// the agents' endpoints and ipcache, and a policy that admitted pods of the
// namespace by label no longer finds them.
func TestPrivilegedNamespaceDeletion(t *testing.T) {
	privileged.Require(t)
	c := testbed.StartCluster(t, testbed.ClusterOptions{Nodes: 2})
	ctx := context.Background()
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tmp"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	spec := testbed.MakePod("tmp", "gone", nil, testbed.TCP(80))
	spec.Spec.NodeName = "node-1"
	if _, err := c.Client.CoreV1().Pods("tmp").Create(ctx, spec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var id string
	waitFor(t, "the pod to become an endpoint of node-1", func() bool {
		if p := c.RunningPod("tmp", "gone"); p != nil {
			id = agentapi.EndpointID(p.ContainerID, testbed.PodIfName)
			_, err := c.Agents[0].Client().Get(ctx, id)
			return err == nil
		}
		return false
	})
	if err := c.Client.CoreV1().Namespaces().Delete(ctx, "tmp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the namespace, its pod and the endpoint to go", func() bool {
		_, err := c.Agents[0].Client().Get(ctx, id)
		_, nsErr := c.Client.CoreV1().Namespaces().Get(ctx, "tmp", metav1.GetOptions{})
		return err != nil && nsErr != nil
	})
}
