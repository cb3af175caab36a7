package bench

import (
	"regexp"
	"slices"
	"strings"

	"github.com/palisade-cni/palisade/tests/testbed"
)

// errorLine matches what the peers log when something fails: klog's E
// lines and anything saying error or failed.
var errorLine = regexp.MustCompile(`(?i)^E\d{4} |error|fail`)

// klogHeader is the prefix klog puts before a message ("E1130 03:16:24.931689
// 6264 controller.go:693] "), which differs between repeats of one error.
var klogHeader = regexp.MustCompile(`^[IWEF]\d{4} [\d:.]+\s+\d+ [^\]]+\] `)

// logErrors returns the last few distinct error messages of the process's
// log, one per line, after a line naming the log, or "" when there are none.
func logErrors(proc *testbed.Process) string {
	lines := ErrorLines(proc.LogTail(1000), 4)
	if len(lines) == 0 {
		return ""
	}
	return "\n" + proc.LogPath() + ":\n" + strings.Join(lines, "\n")
}

// ErrorLines returns the last max distinct error messages of log. klog
// writes a multi-line value as "key=<", indented lines, and ">"; those are
// joined into their entry. Repeats that differ only in klog's header count
// once, at their last place.
func ErrorLines(log string, max int) []string {
	var entries []string
	for line := range strings.Lines(log) {
		line = strings.TrimRight(line, "\n")
		cont := strings.HasPrefix(line, "\t") || strings.HasPrefix(line, " ") || strings.TrimSpace(line) == ">"
		if cont && len(entries) > 0 {
			entries[len(entries)-1] += " " + strings.TrimSpace(line)
			continue
		}
		entries = append(entries, line)
	}
	var out []string
	for i := len(entries) - 1; i >= 0 && len(out) < max; i-- {
		e := entries[i]
		if !errorLine.MatchString(e) {
			continue
		}
		msg := klogHeader.ReplaceAllString(e, "")
		if !slices.ContainsFunc(out, func(o string) bool { return klogHeader.ReplaceAllString(o, "") == msg }) {
			out = append(out, e)
		}
	}
	slices.Reverse(out)
	return out
}
