package bench

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMetrics(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 42
palisade_map_entries{map="ipcache"} 12
palisade_endpoints 3

`
	got, err := ParseMetrics(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 42, `palisade_map_entries{map="ipcache"}`: 12, "palisade_endpoints": 3}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseMetrics (-want +got):\n%s", diff)
	}
	if _, err := ParseMetrics(strings.NewReader("novalue\n")); err == nil {
		t.Error("a line without a value: want an error")
	}
}
