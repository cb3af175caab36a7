package testbed

import (
	"strings"
	"testing"
)

// The seeds' traps: a capitalised field name or a field the API does not
// have must be refused, as the API server refuses it, never dropped.
func TestDecodePolicyIsStrict(t *testing.T) {
	tests := []struct{ name, doc, wantErr string }{
		{"NamespaceSelector with a capital", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from:
    - NamespaceSelector: {matchLabels: {team: x}}
`, "NamespaceSelector"},
		{"ports mis-indented under from", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
      ports:
      - port: 80
`, "ports"},
		{"a valid policy decodes", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: x}}
`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodePolicy([]byte(tt.doc))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("valid policy refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}
