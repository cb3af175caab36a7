package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/daemon/crossnode"
	"github.com/palisade-cni/palisade/daemon/nodestatus"
)

// kubeFlags choose the API server for --all-nodes, as kubectl's do.
type kubeFlags struct {
	kubeconfig string
	context    string
	namespace  string
}

func (k *kubeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "with --all-nodes: the kubeconfig file (default $KUBECONFIG, then ~/.kube/config, then in-cluster)")
	fs.StringVar(&k.context, "context", "", "with --all-nodes: the kubeconfig context (default its current one)")
	fs.StringVar(&k.namespace, "agent-namespace", envOr("PALISADE_NAMESPACE", nodestatus.DefaultNamespace), "with --all-nodes: the namespace the agents run in ($PALISADE_NAMESPACE)")
}

// client connects to the API server the kubeconfig names; kubectl passes
// its plugins no flags of its own, but $KUBECONFIG reaches them.
func (k *kubeFlags) client() (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	cfg := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context})
	rc, err := cfg.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig (--kubeconfig or $KUBECONFIG): %w", err)
	}
	rc.UserAgent = "palisadectl/" + version
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	return client, nil
}

// kubeClient is the API client of --all-nodes; tests replace newKube.
func (c *cli) kubeClient() (kubernetes.Interface, error) {
	if c.newKube != nil {
		return c.newKube()
	}
	return c.kube.client()
}

// clusterStatus prints every node's agent from its Lease.
func (c *cli) clusterStatus(ctx context.Context) error {
	client, err := c.kubeClient()
	if err != nil {
		return err
	}
	now := time.Now()
	sts, err := nodestatus.List(ctx, client, c.kube.namespace, now)
	if sts == nil && err != nil {
		return err
	}
	if err != nil {
		fmt.Fprintf(c.errOut, "%s: warning: %v\n", name(), err)
	}
	if rerr := c.render(sts, func(wide bool) error { return c.nodeTable(sts, now, wide) }); rerr != nil {
		return rerr
	}
	if len(sts) == 0 {
		return &errNotReady{fmt.Sprintf("no agent published its status in namespace %s (--agent-namespace)", c.kube.namespace)}
	}
	var bad []string
	for _, s := range sts {
		if !s.Healthy() {
			bad = append(bad, s.Node)
		}
	}
	if len(bad) > 0 {
		return &errNotReady{fmt.Sprintf("%d of %d nodes have no ready agent: %v", len(bad), len(sts), bad)}
	}
	return nil
}

func (c *cli) nodeTable(sts []nodestatus.NodeStatus, now time.Time, wide bool) error {
	w := c.table()
	head := "NODE\tREADY\tENDPOINTS\tPOLICIES\tUNMANAGED\tVERSION\tLAST SYNC"
	if wide {
		head += "\tRENEWED\tREVISION\tATTACH\tAPI ERROR"
	}
	fmt.Fprintln(w, head)
	for _, s := range sts {
		if s.NoAgent {
			fmt.Fprintf(w, "%s\tno agent\t-\t-\t-\t-\t-", s.Node)
			if wide {
				fmt.Fprint(w, "\t-\t-\t-\t-")
			}
			fmt.Fprintln(w)
			continue
		}
		ready := "yes"
		switch {
		case s.Stale:
			ready = "stale: not renewed for " + ago(now, s.Renewed)
		case !s.Ready:
			ready = "no: " + s.Reason
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%s\t%s", s.Node, ready, s.Endpoints, s.Policies, s.Unmanaged, s.Version, ago(now, s.LastSync)+" ago")
		if wide {
			apiErr := s.APIError
			if apiErr == "" {
				apiErr = "-"
			}
			fmt.Fprintf(w, "\t%s ago\t%d\t%s\t%s", ago(now, s.Renewed), s.Revision, s.AttachMode, apiErr)
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

// ago is a short age, as kubectl prints them.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	}
	return fmt.Sprintf("%dh", int(d.Hours()))
}

// clusterExplain judges both sides of a flow from the API server's objects.
func (c *cli) clusterExplain(ctx context.Context, req *agentapi.ExplainRequest) ([]agentapi.Explanation, error) {
	client, err := c.kubeClient()
	if err != nil {
		return nil, err
	}
	objs, err := crossnode.Read(ctx, client)
	if err != nil {
		return nil, err
	}
	return objs.Explain(*req)
}
