package conformance

import "strings"

// A tag is a capability the case needs ("Needs:…", "Feature:…"); any other
// tag (Ingress, MultiProbe, Uses:…, PolicyMentions:…) only describes the
// case. A case runs unless it needs a capability Palisade or this run
// lacks: the lists below are the whole of what is missing, so a new tag
// naming something Palisade does (Feature:NetworkPolicyEndPort,
// Needs:LabelRemoval, …) runs, and fails rather than passes if the
// datapath gets it wrong.

// lacking are the capabilities Palisade does not have, with the reason.
var lacking = map[string]string{
	"Feature:AdminNetworkPolicy":         "Palisade enforces networking.k8s.io/v1 NetworkPolicy, not AdminNetworkPolicy",
	"Feature:BaselineAdminNetworkPolicy": "Palisade enforces networking.k8s.io/v1 NetworkPolicy, not BaselineAdminNetworkPolicy",
	"Feature:Windows":                    "Palisade runs on Linux nodes only",
}

// lacks is why the run cannot give tag t, or "" when it can.
func (cat *Catalog) lacks(t string) string {
	if !strings.HasPrefix(t, "Needs:") && !strings.HasPrefix(t, "Feature:") {
		return ""
	}
	if why, ok := lacking[t]; ok {
		return why
	}
	family := cat.Family
	if family == "" {
		family = "4"
	}
	switch t {
	case "Needs:IPv6":
		if family == "4" {
			return "this run's pods and Services are IPv4 only (--family 6 or dual gives IPv6)"
		}
	case "Needs:IPv4":
		if family == "6" {
			return "this run's pods and Services are IPv6 only (--family 4 or dual gives IPv4)"
		}
	case "Needs:DualStack":
		if family != "dual" {
			return "this run is single-stack (--family dual gives both)"
		}
	}
	return ""
}
