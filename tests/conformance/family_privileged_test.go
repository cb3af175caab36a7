package conformance

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
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
	root := testbed.ModuleRoot(t)
	for _, tc := range []struct {
		catalog string
		family  Family
	}{
		{"upstream", Family6},
		{"catalog", FamilyDual},
	} {
		t.Run(tc.catalog+"-"+string(tc.family), func(t *testing.T) {
			dir := filepath.Join(root, "tests", "conformance", tc.catalog)
			cat, err := Load(filepath.Join(dir, "model.json"), filepath.Join(dir, "cases.json"))
			if err != nil {
				t.Fatal(err)
			}
			cat.Family = string(tc.family)
			report := NewReport(&logWriter{t: t}, tc.catalog, cat.Model.PodOrder)
			start := time.Now()
			env := SetupFamily(t, cat.Model, 2, true, tc.family)
			env.Explain = true
			report.Header(env, time.Since(start))
			for i := range cat.Cases {
				c := &cat.Cases[i]
				res := Run(env, cat, c)
				report.Add(res)
				if d := res.ExplainDisagreements(); len(d) > 0 {
					t.Errorf("%s: explain disagrees with the datapath on %d pairs:\n%s", c.ID, len(d), strings.Join(d, "\n"))
				}
				switch res.Status {
				case Fail:
					t.Errorf("%s", FormatCase(res, cat.Model.PodOrder))
				case Skip:
					t.Errorf("%s skipped, and this catalog must run in full: %s", c.ID, res.Reason)
				}
			}
			report.Finish()
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
