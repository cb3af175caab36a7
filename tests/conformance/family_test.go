package conformance

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

func TestParseFamily(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Family
		wantErr bool
	}{
		{"4", Family4, false},
		{"6", Family6, false},
		{"dual", FamilyDual, false},
		{"ipv6", "", true},
		{"", "", true},
	} {
		got, err := ParseFamily(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseFamily(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestV6Addr: a fixed IPv4 plan address moves to the same node and host
// number in the node's IPv6 pod CIDR; an address no node has is an error.
func TestV6Addr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.244.1.20", "fd00:10:244:1::14"},
		{"10.244.3.28", "fd00:10:244:3::1c"},
		{"10.244.12.254", "fd00:10:244:c::fe"},
		{"10.244.0.5", ""},  // node 0 does not exist
		{"10.244.1.1", ""},  // the bridge's gateway
		{"10.245.1.20", ""}, // outside the cluster CIDR
	} {
		got, err := v6Addr(netip.MustParseAddr(tc.in))
		if tc.want == "" {
			if err == nil {
				t.Errorf("v6Addr(%s) = %s, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != netip.MustParseAddr(tc.want) {
			t.Errorf("v6Addr(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

// TestV6Prefix: ipBlock CIDRs in the cluster CIDR keep their meaning for
// the fixed plan's IPv6 images (each image lies in the image of every CIDR
// that held the IPv4 address, and in no other); outside CIDRs stay.
func TestV6Prefix(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.244.0.0/16", "fd00:10:244::/56"},
		{"10.244.2.0/24", "fd00:10:244:2::/64"},
		{"10.244.2.24/32", "fd00:10:244:2::18/128"},
		{"10.244.1.16/28", "fd00:10:244:1::10/124"},
		{"10.244.4.0/22", "fd00:10:244:4::/62"},
		{"198.18.0.250/32", "198.18.0.250/32"}, // holds no pod in either family
		{"fd00:10:244:1::/64", "fd00:10:244:1::/64"},
		{"10.0.0.0/8", ""}, // holds every pod and more
		{"0.0.0.0/0", ""},
	} {
		got, err := v6Prefix(netip.MustParsePrefix(tc.in))
		if tc.want == "" {
			if err == nil {
				t.Errorf("v6Prefix(%s) = %s, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != netip.MustParsePrefix(tc.want) {
			t.Errorf("v6Prefix(%s) = %s, %v; want %s", tc.in, got, err, tc.want)
		}
	}
	// Membership is preserved for every plan address and prefix length.
	for _, a := range []string{"10.244.1.20", "10.244.2.27", "10.244.3.130", "10.244.7.2"} {
		ip := netip.MustParseAddr(a)
		ip6, err := v6Addr(ip)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{"10.244.0.0/16", "10.244.1.0/24", "10.244.2.0/24", "10.244.2.16/28", "10.244.3.128/25", "10.244.4.0/22", "10.244.1.20/32"} {
			p4 := netip.MustParsePrefix(p)
			p6, err := v6Prefix(p4)
			if err != nil {
				t.Fatal(err)
			}
			if p4.Contains(ip) != p6.Contains(ip6) {
				t.Errorf("%s in %s = %v, but %s in %s = %v", ip, p4, p4.Contains(ip), ip6, p6, p6.Contains(ip6))
			}
		}
	}
}

// familyPods is a pod address table of both families for the template tests.
var familyPods = map[string][2]string{
	"x/a": {"10.244.1.5", "fd00:10:244:1::5"},
	"x/b": {"10.244.2.7", "fd00:10:244:2::7"},
}

func familyPodAddr(id string, af addrFamily) (netip.Addr, bool) {
	a, ok := familyPods[id]
	if !ok {
		return netip.Addr{}, false
	}
	if af == v6 {
		return netip.MustParseAddr(a[1]), true
	}
	return netip.MustParseAddr(a[0]), true
}

// TestFamilyPolicy: the ipBlocks of a policy for each family: "4" leaves
// the templates to fillTemplates, "6" gives IPv6 /128 hosts and /4
// networks and moves IPv4 literals, "dual" gives each ipBlock peer in
// both families (once, when both forms are the same).
func TestFamilyPolicy(t *testing.T) {
	const policy = `{"metadata":{"namespace":"x","name":"p"},"spec":{
		"podSelector":{},
		"ingress":[{"from":[{"ipBlock":{"cidr":"{{hostCIDR x/a}}"}},{"podSelector":{}}]}],
		"egress":[{"to":[
			{"ipBlock":{"cidr":"{{slash4CIDR x/b}}","except":["{{hostCIDR x/b}}"]}},
			{"ipBlock":{"cidr":"10.244.2.0/24","except":["10.244.2.7/32"]}},
			{"ipBlock":{"cidr":"198.18.0.250/32"}}]}]}}`
	blocks := func(t *testing.T, f Family) (from, to []string) {
		t.Helper()
		var doc any
		if err := json.Unmarshal([]byte(policy), &doc); err != nil {
			t.Fatal(err)
		}
		out, err := familyPolicy(doc, f, familyPodAddr)
		if err != nil {
			t.Fatal(err)
		}
		podIP := func(id string) (netip.Addr, bool) { return familyPodAddr(id, v4) }
		filled, err := fillTemplates(out, podIP)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(filled)
		var pol networkingv1.NetworkPolicy
		if err := json.Unmarshal(raw, &pol); err != nil {
			t.Fatal(err)
		}
		str := func(p networkingv1.NetworkPolicyPeer) string {
			if p.IPBlock == nil {
				return "pods"
			}
			return p.IPBlock.CIDR + " except " + strings.Join(p.IPBlock.Except, ",")
		}
		for _, p := range pol.Spec.Ingress[0].From {
			from = append(from, str(p))
		}
		for _, p := range pol.Spec.Egress[0].To {
			to = append(to, str(p))
		}
		return from, to
	}
	for _, tc := range []struct {
		family   Family
		from, to []string
	}{
		{Family4, []string{"10.244.1.5/32 except ", "pods"}, []string{
			"0.0.0.0/4 except 10.244.2.7/32", "10.244.2.0/24 except 10.244.2.7/32", "198.18.0.250/32 except "}},
		{Family6, []string{"fd00:10:244:1::5/128 except ", "pods"}, []string{
			"f000::/4 except fd00:10:244:2::7/128", "fd00:10:244:2::/64 except fd00:10:244:2::7/128", "198.18.0.250/32 except "}},
		{FamilyDual, []string{"10.244.1.5/32 except ", "fd00:10:244:1::5/128 except ", "pods"}, []string{
			"0.0.0.0/4 except 10.244.2.7/32", "f000::/4 except fd00:10:244:2::7/128",
			"10.244.2.0/24 except 10.244.2.7/32", "fd00:10:244:2::/64 except fd00:10:244:2::7/128",
			"198.18.0.250/32 except "}},
	} {
		t.Run(string(tc.family), func(t *testing.T) {
			from, to := blocks(t, tc.family)
			if !reflect.DeepEqual(from, tc.from) || !reflect.DeepEqual(to, tc.to) {
				t.Errorf("ingress from %q\nwant %q\negress to %q\nwant %q", from, tc.from, to, tc.to)
			}
		})
	}
}

// TestFamilyPolicyNoImage: an ipBlock with no faithful IPv6 image is an
// error for family 6, never a policy that means something else.
func TestFamilyPolicyNoImage(t *testing.T) {
	var doc any
	_ = json.Unmarshal([]byte(`{"spec":{"ingress":[{"from":[{"ipBlock":{"cidr":"10.0.0.0/8"}}]}]}}`), &doc)
	if _, err := familyPolicy(doc, Family6, familyPodAddr); err == nil {
		t.Error("10.0.0.0/8 got an IPv6 image")
	}
}

// TestCheckMembershipIPv6: ipblock_membership keys, templates or IPv4
// literals, are checked against the pods' IPv6 addresses for family 6.
func TestCheckMembershipIPv6(t *testing.T) {
	podIP := func(id string) (netip.Addr, bool) { return familyPodAddr(id, v6) }
	blocks := []*networkingv1.IPBlock{{CIDR: "fd00:10:244::/56", Except: []string{"fd00:10:244:2::7/128"}}}
	ids := []string{"x/a", "x/b"}
	for _, tc := range []struct {
		name       string
		membership map[string][]string
		ok         bool
	}{
		{"host template", map[string][]string{"{{hostCIDR x/b}}": {"x/b"}}, true},
		{"literal with except", map[string][]string{"10.244.0.0/16": {"x/a"}}, true},
		{"node literal", map[string][]string{"10.244.1.0/24": {"x/a"}}, true},
		{"wrong claim", map[string][]string{"10.244.2.0/24": {"x/a"}}, false},
	} {
		err := checkMembership(tc.membership, blocks, ids, podIP, v6)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}

func TestServiceSpecFamily(t *testing.T) {
	for _, tc := range []struct {
		family   Family
		policy   corev1.IPFamilyPolicy
		families []corev1.IPFamily
	}{
		{Family4, "", nil},
		{Family6, corev1.IPFamilyPolicySingleStack, []corev1.IPFamily{corev1.IPv6Protocol}},
		{FamilyDual, corev1.IPFamilyPolicyRequireDualStack, []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}},
	} {
		var spec corev1.ServiceSpec
		tc.family.serviceSpec(&spec)
		var policy corev1.IPFamilyPolicy
		if spec.IPFamilyPolicy != nil {
			policy = *spec.IPFamilyPolicy
		}
		if policy != tc.policy || !reflect.DeepEqual(spec.IPFamilies, tc.families) {
			t.Errorf("family %s: policy %q families %v, want %q %v", tc.family, policy, spec.IPFamilies, tc.policy, tc.families)
		}
	}
}
