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

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *cli) table() *tabwriter.Writer { return tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0) }

func status(ctx context.Context, c *cli, args []string) error {
	_, parse := c.flags("status", "status [-o json]")
	if pos, err := parse(args); err != nil {
		return err
	} else if len(pos) > 0 {
		return &errUsage{"status takes no arguments"}
	}
	st, err := c.client.StatusDetail(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
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
	fmt.Fprintf(w, "Policy revision:\t%d\n", st.Revision)
	fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
	fmt.Fprintf(w, "Identities:\t%d\n", st.Identities)
	fmt.Fprintf(w, "NetworkPolicies:\t%d\n", st.Policies)
	for _, m := range st.Maps {
		fmt.Fprintf(w, "Map %s:\t%d / %d (%.1f%%)\n", m.Map, m.Entries, m.Capacity, 100*float64(m.Entries)/float64(max(m.Capacity, 1)))
	}
	return w.Flush()
}

func endpoints(ctx context.Context, c *cli, args []string) error {
	_, parse := c.flags("endpoints", "endpoints [-o json]")
	if pos, err := parse(args); err != nil {
		return err
	} else if len(pos) > 0 {
		return &errUsage{"endpoints takes no arguments"}
	}
	eps, err := c.client.List(ctx)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(eps)
	}
	w := c.table()
	fmt.Fprintln(w, "POD\tIPS\tINTERFACE\tIDENTITY\tINGRESS\tEGRESS\tPOLICIES\tREVISION\tSOURCE")
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
		fmt.Fprintf(w, "%s/%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", ep.PodNamespace, ep.PodName, strings.Join(ips, ","),
			ep.HostIfName, ep.Identity, isolation(ep.IngressIsolated), isolation(ep.EgressIsolated), pols, rev, source)
	}
	return w.Flush()
}

func isolation(isolated bool) string {
	if isolated {
		return "isolated"
	}
	return "open"
}

func podPolicy(ctx context.Context, c *cli, args []string) error {
	_, parse := c.flags("policy", "policy NAMESPACE/POD [-o json]")
	pos, err := parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || !strings.Contains(pos[0], "/") {
		return &errUsage{"name one pod as NAMESPACE/POD, such as: palisadectl policy prod/backend"}
	}
	pp, err := c.client.Policy(ctx, pos[0])
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(pp)
	}
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
	return nil
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

func explain(ctx context.Context, c *cli, args []string) error {
	fs, parse := c.flags("explain", "explain --from NAMESPACE/POD|IP --to NAMESPACE/POD|IP[:PORT[/PROTOCOL]] [-o json]")
	from := fs.String("from", "", "the flow's source: NAMESPACE/POD or an IP address")
	to := fs.String("to", "", "the flow's destination, with PORT/PROTOCOL (default every port the pod declares; protocol TCP)")
	if pos, err := parse(args); err != nil {
		return err
	} else if len(pos) > 0 {
		return &errUsage{fmt.Sprintf("unexpected %q: use --from and --to", pos[0])}
	}
	if *from == "" || *to == "" {
		return &errUsage{"both --from and --to are required, such as: palisadectl explain --from prod/frontend --to prod/backend:6379/TCP"}
	}
	target, port, proto, err := parseTo(*to)
	if err != nil {
		return &errUsage{err.Error()}
	}
	xs, err := c.client.Explain(ctx, &agentapi.ExplainRequest{From: *from, To: target, Port: port, Protocol: proto})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(xs)
	}
	for i, x := range xs {
		if i > 0 {
			fmt.Fprintln(c.out)
		}
		printExplanation(c, &x)
	}
	return nil
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

func flows(ctx context.Context, c *cli, args []string) error {
	fs, parse := c.flags("flows", "flows [--pod NAMESPACE/POD] [--verdict dropped|allowed] [--follow] [-o json]")
	pod := fs.String("pod", "", "only flows from or to this pod (NAMESPACE/POD, or POD in any namespace)")
	verdict := fs.String("verdict", "", "only dropped or only allowed flows (allowed flows appear only if the agent samples them: --flow-sample-rate)")
	follow := fs.Bool("follow", false, "keep printing new flows until interrupted")
	if pos, err := parse(args); err != nil {
		return err
	} else if len(pos) > 0 {
		return &errUsage{fmt.Sprintf("unexpected %q: use --pod to choose a pod", pos[0])}
	}
	filter := agentapi.FlowFilter{Pod: *pod, Follow: *follow}
	switch *verdict {
	case "":
	case "drop", "dropped", "denied":
		filter.Verdict = agentapi.FlowDropped
	case "allow", "allowed":
		filter.Verdict = agentapi.FlowAllowed
	default:
		return &errUsage{fmt.Sprintf("--verdict %q: use dropped or allowed", *verdict)}
	}
	w := c.table()
	if !c.json {
		fmt.Fprintln(w, "TIME\tVERDICT\tDIRECTION\tSOURCE\tDESTINATION\tPROTOCOL\tWHY")
	}
	err := c.client.Flows(ctx, filter, func(f *agentapi.Flow) error {
		if c.json {
			return json.NewEncoder(c.out).Encode(f)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Time.Local().Format(time.TimeOnly+".000"), f.Verdict,
			f.Direction+" "+f.Pod, flowPeer(f.Source), flowPeer(f.Destination), f.Protocol, f.Summary)
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
