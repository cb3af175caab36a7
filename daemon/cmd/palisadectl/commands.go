package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) printYAML(v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode yaml: %w", err)
	}
	_, err = c.out.Write(b)
	return err
}

// render prints v as JSON or YAML, or calls table for the table and wide
// formats (wide adds columns).
func (c *cli) render(v any, table func(wide bool) error) error {
	switch c.output {
	case "json":
		return c.printJSON(v)
	case "yaml":
		return c.printYAML(v)
	}
	return table(c.output == "wide")
}

func (c *cli) table() *tabwriter.Writer { return tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0) }

func (c *cli) statusCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "The agent's version, readiness, API connection and map fill; --all-nodes: every node's agent",
		Long: `status shows this node's agent: version, readiness, API server connection,
attach mode, counts and how full the datapath's maps are.

With --all-nodes it reads, from the API server, the status every agent
publishes in its Lease (palisade-system/palisade-agent-<node>): one row per
node; an agent that stopped renewing its Lease shows as stale, a node with
no Lease as "no agent".

It exits with 3 when an agent (with --all-nodes: any agent) is not ready.`,
		Args: noArgs("status takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all {
				return c.clusterStatus(cmd.Context())
			}
			return c.status(cmd.Context())
		},
	}
	cmd.Flags().BoolVarP(&all, "all-nodes", "A", false, "every node's agent, from the API server (needs a kubeconfig)")
	return cmd
}

func (c *cli) status(ctx context.Context) error {
	st, err := c.client.StatusDetail(ctx)
	if err != nil {
		return err
	}
	err = c.render(st, func(wide bool) error {
		ready := "yes"
		if !st.Ready {
			ready = "no: " + st.Reason
		}
		api := "connected"
		if !st.APIConnected {
			api = "not connected: " + st.APIError + " (the last policy keeps being enforced)"
		}
		w := c.table()
		fmt.Fprintf(w, "Agent version:\t%s\n", st.Version)
		fmt.Fprintf(w, "Node:\t%s\n", st.NodeName)
		fmt.Fprintf(w, "Ready:\t%s\n", ready)
		fmt.Fprintf(w, "API server:\t%s\n", api)
		fmt.Fprintf(w, "Attach mode:\t%s\n", st.AttachMode)
		if wide {
			fmt.Fprintf(w, "BPF root:\t%s\n", st.BPFRoot)
			fmt.Fprintf(w, "Socket:\t%s\n", c.socket)
		}
		fmt.Fprintf(w, "Policy revision:\t%d\n", st.Revision)
		fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
		fmt.Fprintf(w, "Identities:\t%d\n", st.Identities)
		fmt.Fprintf(w, "NetworkPolicies:\t%d\n", st.Policies)
		for _, m := range st.Maps {
			fmt.Fprintf(w, "Map %s:\t%d / %d (%.1f%%)\n", m.Map, m.Entries, m.Capacity, 100*float64(m.Entries)/float64(max(m.Capacity, 1)))
		}
		return w.Flush()
	})
	if err != nil {
		return err
	}
	if !st.Ready {
		return &errNotReady{fmt.Sprintf("the agent on node %s is not ready: %s", st.NodeName, st.Reason)}
	}
	return nil
}

func (c *cli) endpointsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "endpoints",
		Short: "This node's pods: IPs, interface, identity, isolation, policies",
		Args:  noArgs("endpoints takes no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, err := c.client.List(cmd.Context())
			if err != nil {
				return err
			}
			return c.render(eps, func(wide bool) error { return c.endpointTable(eps, wide) })
		},
	}
}

func (c *cli) endpointTable(eps []agentapi.Endpoint, wide bool) error {
	w := c.table()
	head := "POD\tIPS\tINTERFACE\tIDENTITY\tINGRESS\tEGRESS\tPOLICIES\tREVISION\tSOURCE"
	if wide {
		head += "\tENDPOINT\tIFINDEX\tNETNS"
	}
	fmt.Fprintln(w, head)
	for _, ep := range eps {
		var ips []string
		for _, a := range ep.IPs {
			ips = append(ips, a.String())
		}
		rev := strconv.FormatUint(ep.Revision, 10)
		switch {
		case ep.Revision == 0:
			rev = "not programmed"
		case !ep.Current:
			rev += " (update pending)"
		}
		pols := strings.Join(ep.Policies, ",")
		if pols == "" {
			pols = "-"
		}
		// Pods that ran before the agent are adopted; the rest came
		// through the CNI chain.
		source := "cni"
		if ep.Adopted {
			source = "adopted"
		}
		fmt.Fprintf(w, "%s/%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s", ep.PodNamespace, ep.PodName, strings.Join(ips, ","),
			ep.HostIfName, ep.Identity, isolation(ep.IngressIsolated), isolation(ep.EgressIsolated), pols, rev, source)
		if wide {
			fmt.Fprintf(w, "\t%s\t%d\t%s", ep.ID, ep.HostIfIndex, ep.Netns)
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

func isolation(isolated bool) string {
	if isolated {
		return "isolated"
	}
	return "open"
}

func (c *cli) policyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "policy NAMESPACE/POD",
		Short: "A pod's compiled allow rules, in words and as the map entries read back",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 || !strings.Contains(args[0], "/") {
				return &errUsage{"name one pod as NAMESPACE/POD, such as: palisadectl policy prod/backend"}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			pp, err := c.client.Policy(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return c.render(pp, func(bool) error {
				c.printPodPolicy(pp)
				return nil
			})
		},
	}
}

// printPodPolicy shows the rules in words, each with the map keys it became.
func (c *cli) printPodPolicy(pp *agentapi.PodPolicy) {
	fmt.Fprintf(c.out, "Pod %s (endpoint %s, identity %d, revision %d)\n", pp.Pod, pp.EndpointID, pp.Identity, pp.Revision)
	for _, d := range []struct {
		name string
		p    agentapi.DirectionPolicy
	}{{"Ingress", pp.Ingress}, {"Egress", pp.Egress}} {
		fmt.Fprintf(c.out, "\n%s: ", d.name)
		if !d.p.Isolated {
			fmt.Fprintln(c.out, "not isolated (no policy selects the pod for it): everything is allowed")
			continue
		}
		fmt.Fprintf(c.out, "isolated by %s\n", strings.Join(d.p.Policies, ", "))
		if len(d.p.Rules) == 0 {
			fmt.Fprintln(c.out, "  nothing is allowed (traffic with the pod's own node always is)")
		}
		for _, r := range d.p.Rules {
			fmt.Fprintf(c.out, "  %s\n", r.Text)
			for _, e := range r.Entries {
				fmt.Fprintf(c.out, "      map key {identity %d, protocol %d, port %d, prefixlen %d} -> rule %d\n",
					e.Identity, e.Protocol, e.Port, e.PrefixLen, e.Rule)
			}
		}
	}
}

// portSuffix matches ":PORT" or ":PORT/PROTOCOL" at the end of --to.
var portSuffix = regexp.MustCompile(`^(.+):(\d+)(?:/([A-Za-z]+))?$`)

// parseTo splits NAMESPACE/POD[:PORT[/PROTOCOL]], IP, IPv4:PORT[/PROTOCOL]
// or [IPv6]:PORT[/PROTOCOL].
func parseTo(s string) (target string, port uint16, proto string, err error) {
	if _, err := netip.ParseAddr(s); err == nil {
		return s, 0, "", nil
	}
	m := portSuffix.FindStringSubmatch(s)
	if m == nil {
		if strings.Contains(s, ":") {
			return "", 0, "", fmt.Errorf("--to %q: write PORT/PROTOCOL as in prod/backend:6379/TCP", s)
		}
		return s, 0, "", nil
	}
	n, err := strconv.ParseUint(m[2], 10, 16)
	if err != nil || n == 0 {
		return "", 0, "", fmt.Errorf("--to %q: port must be 1-65535", s)
	}
	target = strings.TrimSuffix(strings.TrimPrefix(m[1], "["), "]")
	return target, uint16(n), strings.ToUpper(m[3]), nil
}

func (c *cli) explainCommand() *cobra.Command {
	var from, to string
	var all bool
	cmd := &cobra.Command{
		Use:   "explain --from FROM --to TO[:PORT[/PROTOCOL]]",
		Short: "Would the datapath allow this flow, which policies say so, and what would allow it",
		Long: `explain says whether the datapath allows a flow, which policies and rules
decide, and the smallest change that would allow a denied flow. FROM and TO
are NAMESPACE/POD or an IP address ([IPv6]:PORT). Without a port, every
port the destination pod declares is explained.

On a node, the agent judges the sides of the flow whose pods run there.
With --all-nodes, palisadectl reads the cluster's objects from the API
server and judges both sides, each as the agent of that pod's node
compiles it.

It exits with 0 whether the flow is allowed or denied: the verdict is in
the output ("allowed" in -o json).`,
		Example: `  palisadectl explain --from prod/frontend --to prod/backend:6379/TCP
  kubectl palisade explain --all-nodes --from prod/frontend --to 10.244.2.7:53/UDP`,
		Args: noArgs("use --from and --to"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || to == "" {
				return &errUsage{"both --from and --to are required, such as: palisadectl explain --from prod/frontend --to prod/backend:6379/TCP"}
			}
			target, port, proto, err := parseTo(to)
			if err != nil {
				return &errUsage{err.Error()}
			}
			req := &agentapi.ExplainRequest{From: from, To: target, Port: port, Protocol: proto}
			var xs []agentapi.Explanation
			if all {
				xs, err = c.clusterExplain(cmd.Context(), req)
			} else {
				xs, err = c.client.Explain(cmd.Context(), req)
			}
			if err != nil {
				return err
			}
			return c.render(xs, func(bool) error {
				for i, x := range xs {
					if i > 0 {
						fmt.Fprintln(c.out)
					}
					printExplanation(c, &x)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the flow's source: NAMESPACE/POD or an IP address")
	cmd.Flags().StringVar(&to, "to", "", "the flow's destination, with PORT/PROTOCOL (default every port the pod declares; protocol TCP)")
	cmd.Flags().BoolVarP(&all, "all-nodes", "A", false, "judge both sides, wherever the pods run, from the API server's objects (needs a kubeconfig)")
	return cmd
}

func printExplanation(c *cli, x *agentapi.Explanation) {
	verdict := "ALLOWED"
	if !x.Allowed {
		verdict = "DENIED"
	}
	fmt.Fprintf(c.out, "%s -> %s %s/%d: %s\n", peerName(x.From), peerName(x.To), x.Protocol, x.Port, verdict)
	for _, d := range []struct {
		name string
		v    *agentapi.DirectionVerdict
	}{{"egress of", x.Egress}, {"ingress of", x.Ingress}} {
		if d.v == nil {
			continue
		}
		word := "allows"
		if !d.v.Allowed {
			word = "denies"
		}
		fmt.Fprintf(c.out, "  %s %s %s: %s\n", d.name, d.v.Pod, word, d.v.Reason)
		for _, p := range d.v.Policies {
			fmt.Fprintf(c.out, "    policy %s\n", p.Policy)
			if len(p.Rules) == 0 {
				fmt.Fprintln(c.out, "      has no rules for this direction: it only isolates")
			}
			for _, r := range p.Rules {
				mark := "✗"
				if r.Allows {
					mark = "✓"
				}
				fmt.Fprintf(c.out, "      %s %s: %s\n", mark, r.Rule, r.Why)
			}
		}
		if d.v.Fix != "" {
			fmt.Fprintf(c.out, "  To allow it: %s\n", indent(d.v.Fix, "    "))
		}
	}
	for _, n := range x.Notes {
		fmt.Fprintf(c.out, "  note: %s\n", n)
	}
}

func peerName(p agentapi.Peer) string {
	if p.Pod != "" {
		return p.Pod + " (" + p.IP + ")"
	}
	return p.IP
}

func indent(s, prefix string) string {
	return strings.TrimRight(strings.ReplaceAll(s, "\n", "\n"+prefix), " ")
}

func (c *cli) flowsCommand() *cobra.Command {
	var pod, verdict string
	var follow bool
	cmd := &cobra.Command{
		Use:   "flows [--pod NAMESPACE/POD] [--verdict dropped|allowed] [--follow]",
		Short: "Recent and live verdicts of this node's datapath",
		Long: `flows prints the datapath's recent verdicts on this node, and with --follow
new ones until interrupted. Drops are always reported; allowed flows only
when the agent samples them (--flow-sample-rate). -o json writes one object
a line, -o yaml one document per flow.`,
		Args: noArgs("use --pod to choose a pod"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			filter := agentapi.FlowFilter{Pod: pod, Follow: follow}
			switch verdict {
			case "":
			case "drop", "dropped", "denied":
				filter.Verdict = agentapi.FlowDropped
			case "allow", "allowed":
				filter.Verdict = agentapi.FlowAllowed
			default:
				return &errUsage{fmt.Sprintf("--verdict %q: use dropped or allowed", verdict)}
			}
			return c.flows(cmd.Context(), filter)
		},
	}
	cmd.Flags().StringVar(&pod, "pod", "", "only flows from or to this pod (NAMESPACE/POD, or POD in any namespace)")
	cmd.Flags().StringVar(&verdict, "verdict", "", "only dropped or only allowed flows (allowed flows appear only if the agent samples them: --flow-sample-rate)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new flows until interrupted")
	_ = cmd.RegisterFlagCompletionFunc("verdict", cobra.FixedCompletions([]string{"dropped", "allowed"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func (c *cli) flows(ctx context.Context, filter agentapi.FlowFilter) error {
	w := c.table()
	wide := c.output == "wide"
	switch c.output {
	case "table":
		fmt.Fprintln(w, "TIME\tVERDICT\tDIRECTION\tSOURCE\tDESTINATION\tPROTOCOL\tWHY")
	case "wide":
		fmt.Fprintln(w, "TIME\tVERDICT\tDIRECTION\tSOURCE\tDESTINATION\tPROTOCOL\tWHY\tREASON\tRULE\tIDENTITIES")
	}
	err := c.client.Flows(ctx, filter, func(f *agentapi.Flow) error {
		switch c.output {
		case "json":
			return json.NewEncoder(c.out).Encode(f)
		case "yaml":
			fmt.Fprintln(c.out, "---")
			return c.printYAML(f)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s", f.Time.Local().Format(time.TimeOnly+".000"), f.Verdict,
			f.Direction+" "+f.Pod, flowPeer(f.Source), flowPeer(f.Destination), f.Protocol, f.Summary)
		if wide {
			rule := "-"
			if f.Policy != "" {
				rule = f.Policy + " " + f.Rule
			}
			fmt.Fprintf(w, "\t%s\t%s\t%d->%d", f.Reason, rule, f.Source.Identity, f.Destination.Identity)
		}
		fmt.Fprintln(w)
		if filter.Follow {
			return w.Flush()
		}
		return nil
	})
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if ctx.Err() != nil {
		return nil // interrupted: the normal end of --follow
	}
	return err
}

func flowPeer(p agentapi.FlowPeer) string {
	s := p.IP + ":" + strconv.Itoa(int(p.Port))
	if addr, err := netip.ParseAddr(p.IP); err == nil {
		s = netip.AddrPortFrom(addr, p.Port).String()
	}
	if p.Pod != "" {
		s = p.Pod + " " + s
	}
	return s
}
