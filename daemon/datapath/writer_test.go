package datapath

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cni/palisade/bpf"
)

func TestDiffWritesOnlyTheDifference(t *testing.T) {
	key := func(id uint32) bpf.PolicyKey { return bpf.PolicyKey{Prefixlen: 32, Identity: id} }
	entry := func(id, ref uint32) bpf.PolicyEntry {
		return bpf.PolicyEntry{Key: key(id), Value: bpf.PolicyValue{Rule: ref}}
	}
	for _, tt := range []struct {
		name       string
		have, want []bpf.PolicyEntry
		add        []bpf.PolicyEntry
		del        []bpf.PolicyKey
	}{
		{name: "nothing"},
		{name: "all new", want: []bpf.PolicyEntry{entry(1, 1), entry(2, 1)}, add: []bpf.PolicyEntry{entry(1, 1), entry(2, 1)}},
		{name: "all gone", have: []bpf.PolicyEntry{entry(1, 1), entry(2, 1)}, del: []bpf.PolicyKey{key(1), key(2)}},
		{name: "same", have: []bpf.PolicyEntry{entry(1, 1)}, want: []bpf.PolicyEntry{entry(1, 1)}},
		{name: "another rule behind a key", have: []bpf.PolicyEntry{entry(1, 1)}, want: []bpf.PolicyEntry{entry(1, 2)},
			add: []bpf.PolicyEntry{entry(1, 2)}},
		{name: "interleaved", have: []bpf.PolicyEntry{entry(1, 1), entry(3, 1), entry(5, 1)},
			want: []bpf.PolicyEntry{entry(2, 1), entry(3, 1), entry(6, 1)},
			add:  []bpf.PolicyEntry{entry(2, 1), entry(6, 1)}, del: []bpf.PolicyKey{key(1), key(5)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			add, del := diff(tt.have, tt.want)
			if d := cmp.Diff(tt.add, add); d != "" {
				t.Errorf("add (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.del, del); d != "" {
				t.Errorf("del (-want +got):\n%s", d)
			}
		})
	}
}
