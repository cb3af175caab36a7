package testbed

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
)

// The testbed's address plan. None of it is routed in the host's namespace.
var (
	// UnderlayPrefix is the node network; the control plane holds its first address.
	UnderlayPrefix = netip.MustParsePrefix("198.18.0.0/24")
	// APIServerIP is where processes inside node namespaces reach the API.
	APIServerIP = netip.MustParseAddr("198.18.0.1")
	// ClusterCIDR holds every node's pod CIDR (10.244.<index>.0/24).
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// ServiceCIDR is kube-apiserver's --service-cluster-ip-range, where
	// Services get their ClusterIP unless they ask for IPv6.
	ServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")
	// ServiceCIDR6 is the range's IPv6 half, for IPv6 Services of
	// dual-stack pods.
	ServiceCIDR6 = netip.MustParsePrefix("fd00:10:96::/112")
)

const (
	apiServerPort = 6443
	underlayIf    = "ul0"
	// readyTimeout bounds the control plane's start. It is usually up in a
	// few seconds; the first start after a reboot reads 100 MB of binary.
	readyTimeout = 90 * time.Second
)

// ControlPlane is etcd and kube-apiserver in a namespace of their own, on the
// underlay bridge that every node's namespace is plugged into.
type ControlPlane struct {
	// NetNS holds the underlay bridge, etcd and kube-apiserver.
	NetNS *NetNS
	// Client and RestConfig work from the test's own namespace: their
	// sockets are opened inside NetNS.
	Client     kubernetes.Interface
	RestConfig *rest.Config
	// CNP is a ClusterNetworkPolicy client; the CRD is installed at start.
	CNP       cnpclient.Interface
	Etcd      *Process
	APIServer *Process

	kubeconfig string

	mu    sync.Mutex
	nodes []*Node
}

// StartControlPlane brings up etcd and kube-apiserver and waits until the API
// is ready and the default namespace exists. Cleanup stops both and deletes
// the namespace. apiserverArgs are extra kube-apiserver flags, such as
// feature gates a test needs.
func StartControlPlane(tb TB, apiserverArgs ...string) *ControlPlane {
	tb.Helper()
	start := time.Now()
	kubeDir := KubeBinDir(tb)
	cp := &ControlPlane{NetNS: NewNetNS(tb, "pal-cp")}
	if err := cp.NetNS.Do(addUnderlayBridge); err != nil {
		tb.Fatalf("control plane netns %s: %v", cp.NetNS.Name(), err)
	}

	dir := tb.TempDir()
	token := randomHex(16)
	tokenFile := filepath.Join(dir, "tokens.csv")
	// token,user,uid,"groups": system:masters passes every authorizer.
	writeFile(tb, tokenFile, fmt.Sprintf("%s,admin,admin,\"system:masters\"\n", token), 0o600)
	saKey := filepath.Join(dir, "sa.key")
	writeFile(tb, saKey, string(rsaKeyPEM(tb)), 0o600)
	cp.kubeconfig = filepath.Join(dir, "kubeconfig")
	writeFile(tb, cp.kubeconfig, kubeconfigYAML(fmt.Sprintf("https://%s:%d", APIServerIP, apiServerPort), token), 0o600)

	cp.Etcd = StartProcess(tb, cp.NetNS, "etcd", "etcd",
		"--name=palisade-testbed",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=palisade-testbed=http://127.0.0.1:2380",
		"--logger=zap",
		"--log-level=warn",
	)
	certDir := filepath.Join(dir, "certs")
	cp.APIServer = StartProcess(tb, cp.NetNS, "kube-apiserver", append([]string{filepath.Join(kubeDir, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0",
		fmt.Sprintf("--secure-port=%d", apiServerPort),
		"--advertise-address=" + APIServerIP.String(),
		"--service-cluster-ip-range=" + ServiceCIDR.String() + "," + ServiceCIDR6.String(),
		"--cert-dir=" + certDir,
		"--authorization-mode=AlwaysAllow",
		"--token-auth-file=" + tokenFile,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		// No kubelet mounts tokens and no controller creates the
		// default ServiceAccount, so pods must not need one.
		"--disable-admission-plugins=ServiceAccount",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}, apiserverArgs...)...)

	cp.RestConfig = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", apiServerPort),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		// The API listens only inside the control plane's namespace.
		Dial:  cp.NetNS.DialContext,
		QPS:   200,
		Burst: 400,
	}
	client, err := kubernetes.NewForConfig(cp.RestConfig)
	if err != nil {
		tb.Fatalf("create kubernetes client: %v", err)
	}
	cp.Client = client
	if err := cp.waitReady(); err != nil {
		tb.Fatal(err)
	}
	tb.Logf("control plane ready in %v (netns %s)", time.Since(start).Round(time.Millisecond), cp.NetNS.Name())
	return cp
}

// Kubeconfig is a kubeconfig file for processes inside node namespaces: it
// names https://198.18.0.1:6443, a bearer token, and skips TLS verification.
func (cp *ControlPlane) Kubeconfig() string { return cp.kubeconfig }

// waitReady polls /readyz, then the default namespace that kube-apiserver's
// bootstrap controller creates shortly after.
func (cp *ControlPlane) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	var last error
	for {
		select {
		case <-cp.APIServer.Exited():
			return fmt.Errorf("kube-apiserver exited while starting: %v", cp.APIServer.ExitErr())
		case <-cp.Etcd.Exited():
			return fmt.Errorf("etcd exited while starting: %v", cp.Etcd.ExitErr())
		default:
		}
		last = cp.ready(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for kube-apiserver ready (%v): %w", readyTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) ready(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	body, err := cp.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
	if err != nil {
		return fmt.Errorf("get /readyz: %w: %s", err, body)
	}
	if _, err := cp.Client.CoreV1().Namespaces().Get(rctx, metav1.NamespaceDefault, metav1.GetOptions{}); err != nil {
		return fmt.Errorf("get namespace default: %w", err)
	}
	return nil
}

// addUnderlayBridge creates ul0 with the control plane's address; node
// namespaces join it through veths.
func addUnderlayBridge() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: underlayIf}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", underlayIf, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   APIServerIP.AsSlice(),
		Mask: net.CIDRMask(UnderlayPrefix.Bits(), 32),
	}}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, underlayIf, err)
	}
	return linkUp(underlayIf)
}

// rsaKeyPEM makes the service-account signing key. 2048 bits takes ~50 ms,
// which is why it is not 4096.
func rsaKeyPEM(tb TB) []byte {
	tb.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatalf("generate service account key: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

func kubeconfigYAML(server, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: testbed
  context:
    cluster: testbed
    user: admin
current-context: testbed
`, server, token)
}

func writeFile(tb TB, path, content string, perm os.FileMode) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
}
