package conformance

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// templateRE finds the catalog's run-time templates, such as
// {{hostCIDR x/b}}, anywhere in a string of a policy.
var templateRE = regexp.MustCompile(`\{\{\s*(\w+)\s+([^}\s]+)\s*\}\}`)

// templateFuncs turn a live pod IP into the text a template stands for.
var templateFuncs = map[string]func(netip.Addr) string{
	// The pod's host route: /32 or /128.
	"hostCIDR": func(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() },
	// The /4 network around the pod IP (upstream makeLargeCIDRForIP).
	"slash4CIDR": func(ip netip.Addr) string { return netip.PrefixFrom(ip, 4).Masked().String() },
}

// checkTemplates reports a template the runner cannot fill: an unknown
// function, a pod outside the model, or a stray "{{".
func checkTemplates(v any, known func(id string) bool) error {
	var err error
	walkStrings(v, func(s string) string {
		if err != nil {
			return s
		}
		rest := templateRE.ReplaceAllStringFunc(s, func(t string) string {
			sub := templateRE.FindStringSubmatch(t)
			if _, ok := templateFuncs[sub[1]]; !ok {
				err = fmt.Errorf("template %s: function %q is not supported by this runner", t, sub[1])
			} else if !known(sub[2]) {
				err = fmt.Errorf("template %s: no pod %s at this step", t, sub[2])
			}
			return ""
		})
		if err == nil && strings.Contains(rest, "{{") {
			err = fmt.Errorf("template in %q is not supported by this runner", s)
		}
		return s
	})
	return err
}

// fillTemplates replaces every template in v (a decoded JSON document) with
// its value for the live pod IPs.
func fillTemplates(v any, podIP func(id string) (netip.Addr, bool)) (any, error) {
	var err error
	out := walkStrings(v, func(s string) string {
		return templateRE.ReplaceAllStringFunc(s, func(t string) string {
			sub := templateRE.FindStringSubmatch(t)
			fn, ok := templateFuncs[sub[1]]
			ip, found := podIP(sub[2])
			if !ok || !found {
				err = fmt.Errorf("cannot fill template %s", t)
				return t
			}
			return fn(ip)
		})
	})
	return out, err
}

// walkStrings returns a copy of v with every string (values only, not keys)
// passed through fn.
func walkStrings(v any, fn func(string) string) any {
	switch x := v.(type) {
	case string:
		return fn(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = walkStrings(e, fn)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = walkStrings(e, fn)
		}
		return out
	default:
		return v
	}
}
