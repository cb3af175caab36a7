package inspect

import (
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// decodePolicy reads the YAML a fix proposes.
func decodePolicy(fix string) (*networkingv1.NetworkPolicy, error) {
	_, doc, _ := strings.Cut(fix, "\n")
	var np networkingv1.NetworkPolicy
	return &np, yaml.UnmarshalStrict([]byte(doc), &np)
}
