package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
)

// The fuzz targets feed the runtime's inputs, netconf and CNI_ARGS, to the
// parsers. Their seeds are the fixtures of the table tests plus the corpus
// in testdata/fuzz/<target>, which plain `go test` replays; `make fuzz`
// mutates them for longer.

// FuzzParseConfig: whatever stdin holds, parseConfig neither panics nor
// fails with anything but a config error (CNI code 7, a message saying what
// to change), and what it accepts is usable: an absolute socket, a known log
// level, a prevResult whenever the netconf has one, one DEL accepts as well,
// and one that ADD can print back in the netconf's version.
func FuzzParseConfig(f *testing.F) {
	for _, ver := range cniVersions {
		f.Add(netconf(f, ver))
		f.Add(netconf(f, ver, without("prevResult")))
		f.Add(netconf(f, ver, set("agentSocket", "/run/x.sock"), set("logLevel", "debug")))
	}
	f.Fuzz(func(t *testing.T, stdin []byte) {
		conf, prev, err := parseConfig(stdin)
		if err != nil {
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("parseConfig error %v (%T) is not a config error", err, err)
			}
			if conf != nil || prev != nil {
				t.Fatalf("parseConfig returned a config with its error %v", err)
			}
			return
		}
		if !filepath.IsAbs(conf.AgentSocket) {
			t.Errorf("accepted a relative agentSocket %q", conf.AgentSocket)
		}
		if lvl, ok := logLevels[conf.LogLevel]; !ok || lvl != conf.level {
			t.Errorf("accepted logLevel %q as level %v", conf.LogLevel, conf.level)
		}
		// ParsePrevResult moves RawPrevResult into PrevResult.
		if (conf.PrevResult != nil) != (prev != nil) {
			t.Errorf("netconf has a prevResult: %v; converted one: %v", conf.PrevResult != nil, prev != nil)
		}
		// DEL, GC and STATUS read the netconf without prevResult: a
		// netconf ADD accepts must not fail them.
		if _, err := parseNetconf(stdin); err != nil {
			t.Errorf("parseConfig accepted what parseNetconf rejects: %v", err)
		}
		if prev == nil {
			return
		}
		// containerIPs reads indexes and addresses from the runtime's
		// result: no value may crash it, and what it returns is valid.
		if ips, err := containerIPs(prev, "eth0"); err == nil {
			for _, a := range ips {
				if !a.IsValid() || a.Is4In6() {
					t.Errorf("containerIPs returned %v", a)
				}
			}
		}
		// ADD ends with types.PrintResult(prev, conf.CNIVersion): the
		// result must convert back and print, and printing it again after
		// one more parse changes nothing (the pass-through the spec asks).
		first := printAs(t, prev, conf.CNIVersion)
		if first == nil {
			return
		}
		// The next plugin in the chain, or the runtime, reads it in the
		// netconf's version.
		again, err := create.Create(conf.CNIVersion, first)
		if err != nil {
			t.Fatalf("parse what ADD printed: %v\n%s", err, first)
		}
		againCur, err := current.NewResultFromResult(again)
		if err != nil {
			t.Fatalf("convert what ADD printed: %v\n%s", err, first)
		}
		if second := printAs(t, againCur, conf.CNIVersion); !bytes.Equal(first, second) {
			t.Errorf("prevResult does not pass through stably:\nfirst  %s\nsecond %s", first, second)
		}
	})
}

// printAs is what ADD writes to stdout for prev, or nil when the result
// cannot be expressed in version ver, which ADD reports as an error.
func printAs(t *testing.T, prev *current.Result, ver string) []byte {
	t.Helper()
	out, err := prev.GetAsVersion(ver)
	if err != nil {
		return nil
	}
	var buf bytes.Buffer
	if err := out.PrintTo(&buf); err != nil {
		t.Fatalf("print prevResult as %s: %v", ver, err)
	}
	return buf.Bytes()
}

// FuzzParsePodArgs: CNI_ARGS either yields a namespace and a name, which
// the agent needs to find the pod's policies, or a config error.
func FuzzParsePodArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=ctr;K8S_POD_UID=u1")
	f.Add("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b")
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=default")
	f.Add("K8S_POD_NAME")
	f.Add("")
	f.Fuzz(func(t *testing.T, cniArgs string) {
		pa, err := parsePodArgs(cniArgs)
		if err != nil {
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("parsePodArgs error %v (%T) is not a config error", err, err)
			}
			return
		}
		if pa.K8S_POD_NAMESPACE == "" || pa.K8S_POD_NAME == "" {
			t.Errorf("accepted %q without a namespace or name: %q", cniArgs, pa.pod())
		}
	})
}
