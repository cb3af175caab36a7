package bench

import (
	"fmt"
	"strings"
	"time"
)

// PluginPhases are the phases palisade's ADD times and logs on its
// "Programs attached" line (plugin/add.go): finding the host veth, the
// registration round trip to the agent, attaching the programs.
var PluginPhases = []string{"vethLookup", "register", "attach"}

// ParsePhases reads each phase's times from palisade's log (slog's text
// format) in the order of its ADDs.
func ParsePhases(log string) (map[string][]time.Duration, error) {
	out := map[string][]time.Duration{}
	for line := range strings.Lines(log) {
		if !strings.Contains(line, `msg="Programs attached"`) {
			continue
		}
		for _, field := range strings.Fields(line) {
			k, v, ok := strings.Cut(field, "=")
			if !ok || !isPhase(k) {
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("phase %s in %q: %w", k, strings.TrimSpace(line), err)
			}
			out[k] = append(out[k], d)
		}
	}
	for _, ph := range PluginPhases {
		if len(out[ph]) == 0 {
			return nil, fmt.Errorf("no %s times in the log: is the plugin older than its phase logging?", ph)
		}
	}
	return out, nil
}

func isPhase(k string) bool {
	for _, ph := range PluginPhases {
		if k == ph {
			return true
		}
	}
	return false
}
