package conformance

import (
	"testing"

	"github.com/palisade-cni/palisade/tests/privileged"
)

// TestPrivilegedConformanceFamilies replays catalogs on the other address
// families (issue 16): the upstream suite on IPv6, every pod, Service,
// ipBlock and probe of it IPv6 on dual-stack Flannel, and our catalog on
// dual stack, every probe step once per family. Every case must pass, as
// for IPv4 (TestPrivilegedConformance). README "Conformance" has the runs'
// numbers; scripts/conformance --family 6|dual replays any catalog so.
func TestPrivilegedConformanceFamilies(t *testing.T) {
	privileged.Require(t)
	if *flagCLI || *flagModel != "" {
		t.Skip("scripts/conformance mode: --family chooses the family of TestPrivilegedConformance")
	}
	specs := map[string]catalogSpec{}
	for _, spec := range defaultCatalogs(t) {
		specs[spec.name] = spec
	}
	for _, tc := range []struct {
		catalog string
		family  Family
	}{
		{"upstream-netpol", Family6},
		{"palisade", FamilyDual},
	} {
		t.Run(tc.catalog+"-"+string(tc.family), func(t *testing.T) {
			spec, ok := specs[tc.catalog]
			if !ok {
				t.Fatalf("no default catalog %s", tc.catalog)
			}
			report := replayCatalog(t, spec, nil, ViaClusterIP, tc.family)
			// Every probe was of the family asked for, and there were some.
			want := map[string]bool{}
			for _, af := range tc.family.addrFamilies() {
				want[af.String()] = true
			}
			seen := map[string]int{}
			for _, c := range report.Cases {
				for _, p := range c.Probes {
					seen[p.Family]++
				}
			}
			for f := range want {
				if seen[f] == 0 {
					t.Errorf("no %s probe in the whole catalog: %v", f, seen)
				}
			}
			for f := range seen {
				if !want[f] {
					t.Errorf("%d probes of family %q, want only %v", seen[f], f, tc.family.addrFamilies())
				}
			}
		})
	}
}
