package bench

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// writeServiceAccount writes what a kubelet mounts for a pod's service
// account: the testbed's token, and the API server's certificate chain as
// seen from node n as the CA.
func writeServiceAccount(c *testbed.Cluster, n *testbed.Node, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := n.NetNS.DialContext(ctx, "tcp", net.JoinHostPort(testbed.APIServerIP.String(), "6443"))
	if err != nil {
		return "", fmt.Errorf("fetch API server certificate from %s: %w", n.Name, err)
	}
	conn := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) // only to read the chain it presents
	defer conn.Close()
	if err := conn.HandshakeContext(ctx); err != nil {
		return "", fmt.Errorf("fetch API server certificate from %s: %w", n.Name, err)
	}
	var ca []byte
	for _, cert := range conn.ConnectionState().PeerCertificates {
		ca = append(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca, 0o600); err != nil {
		return "", fmt.Errorf("write service account CA: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "token"), []byte(c.RestConfig.BearerToken), 0o600); err != nil {
		return "", fmt.Errorf("write service account token: %w", err)
	}
	return dir, nil
}

// bridgeNetfilter makes the node's bridge hand bridged (same-node) pod
// traffic to iptables, which iptables-based engines need, and restores the
// previous value at cleanup. The sysctl is per network namespace.
func bridgeNetfilter(t testbed.TB, n *testbed.Node) {
	t.Helper()
	const key = "net/bridge/bridge-nf-call-iptables"
	var old []byte
	err := n.NetNS.Do(func() error {
		var err error
		old, err = os.ReadFile(filepath.Join("/proc/sys", key))
		return err
	})
	if err != nil {
		t.Fatalf("read %s on %s: %v", key, n.Name, err)
	}
	if err := n.NetNS.Sysctl(key, "1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.NetNS.Sysctl(key, strings.TrimSpace(string(old))); err != nil {
			t.Errorf("restore: %v", err)
		}
	})
}

// nftQueueCheck loads, in the node's namespace, a scratch table with the
// one statement kube-network-policies cannot do without (queue, to hand
// new flows to user space) and reports what nft says; the table is deleted
// if it loaded.
func nftQueueCheck(n *testbed.Node) string {
	const table = "palisade-peer-check"
	rules := "table inet " + table + " {\n\tchain c {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\tqueue num 98 bypass\n\t}\n}\n"
	var out []byte
	err := n.NetNS.Do(func() error {
		cmd := exec.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		var err error
		out, err = cmd.CombinedOutput()
		if err == nil {
			_ = exec.Command("nft", "delete", "table", "inet", table).Run()
		}
		return err
	})
	what := fmt.Sprintf("nft -f in %s's namespace, a forward chain whose line 4 is %q", n.Name, "queue num 98 bypass")
	if err != nil {
		return fmt.Sprintf("%s: %v: %s", what, err, strings.TrimSpace(string(out)))
	}
	return what + ": loads"
}
