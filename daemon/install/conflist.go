package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// PluginType is the CNI type of Palisade's conflist entry.
const PluginType = "palisade"

// entry is what Chain appends: the plugin's defaults (agent socket, log
// level) are right for a node, so the entry carries nothing else.
const entry = `{"type": "palisade"}`

// vethPlugins are main plugins known to give each pod a veth whose host end
// is in the node's namespace, where Palisade attaches its programs.
var vethPlugins = map[string]bool{
	"flannel":   true, // delegates to bridge unless told otherwise (checked below)
	"bridge":    true,
	"ptp":       true,
	"weave-net": true,
}

// nonVethPlugins are main plugins that give pods no host-side veth; the
// message names why Palisade cannot work with them.
var nonVethPlugins = map[string]string{
	"macvlan":     "macvlan pods share the parent interface's hardware with no host-side veth",
	"ipvlan":      "ipvlan pods share the parent interface with no host-side veth",
	"host-device": "host-device moves a host interface into the pod; there is no host-side end",
	"sriov":       "SR-IOV pods own a virtual function; there is no host-side veth",
	"vlan":        "vlan pods get a VLAN sub-interface with no host-side veth",
	"tap":         "tap pods have no host-side veth",
	"dummy":       "dummy interfaces carry no pod traffic through the host",
}

// ErrNotConflist means the configuration the kubelet reads is a single
// plugin (.conf or .json), which cannot chain a second plugin.
var ErrNotConflist = errors.New("not a conflist")

// ErrUnsupportedMainPlugin means the conflist's first plugin does not give
// pods a host-side veth.
var ErrUnsupportedMainPlugin = errors.New("main plugin not veth-based")

// Options tune Chain.
type Options struct {
	// AcceptMainPlugins are extra main plugin types to accept, for a CNI
	// that gives each pod a veth but that Palisade does not know by name.
	AcceptMainPlugins []string
}

// layout is where things are in a conflist's bytes.
type layout struct {
	// plugins[i] is the [start, end) of the i-th element of "plugins".
	plugins [][2]int
	// open and close are the offsets of the array's brackets.
	open, close int
	// types[i] is the "type" of plugins[i].
	types []string
	// raw[i] is plugins[i] decoded, for checks.
	raw []map[string]json.RawMessage
}

// parse finds the "plugins" array of a conflist document and where each of
// its elements sits in data. A document that is not JSON, not an object,
// or has no plugins array is refused with a message saying which.
func parse(name string, data []byte) (*layout, error) {
	if !json.Valid(data) {
		var v any
		err := json.Unmarshal(data, &v)
		return nil, fmt.Errorf("%s is not valid JSON (the kubelet cannot use it either; fix or remove it first): %w", name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("%s: a conflist is a JSON object", name)
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		if key, _ := tok.(string); key != "plugins" {
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, fmt.Errorf("read %s: %w", name, err)
			}
			continue
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		if tok != json.Delim('[') {
			return nil, fmt.Errorf("%s: %w: \"plugins\" is not a list", name, ErrNotConflist)
		}
		l := &layout{open: int(dec.InputOffset()) - 1}
		for dec.More() {
			before := int(dec.InputOffset())
			var raw json.RawMessage
			if err := dec.Decode(&raw); err != nil {
				return nil, fmt.Errorf("read %s: %w", name, err)
			}
			end := int(dec.InputOffset())
			start := skipSeparators(data, before)
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(raw, &obj); err != nil {
				return nil, fmt.Errorf("%s: plugin %d is not an object", name, len(l.plugins))
			}
			var typ string
			_ = json.Unmarshal(obj["type"], &typ)
			l.plugins = append(l.plugins, [2]int{start, end})
			l.types = append(l.types, typ)
			l.raw = append(l.raw, obj)
		}
		if _, err := dec.Token(); err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		l.close = int(dec.InputOffset()) - 1
		return l, nil
	}
	return nil, fmt.Errorf("%s: %w: it has no \"plugins\" list", name, ErrNotConflist)
}

// skipSeparators moves past whitespace and the comma the decoder leaves
// before an array element.
func skipSeparators(data []byte, i int) int {
	for i < len(data) && strings.IndexByte(" \t\r\n,", data[i]) >= 0 {
		i++
	}
	return i
}

// Chain returns the conflist data with {"type": "palisade"} appended to its
// plugins, and changed=false with data unchanged when Palisade is already in
// the chain. name is the file name, for messages and for the kind of file:
// .conf and .json files hold a single plugin and are refused.
func Chain(name string, data []byte, opts Options) (out []byte, changed bool, err error) {
	if ext := filepath.Ext(name); ext != ".conflist" {
		return nil, false, fmt.Errorf("%s: %w: the kubelet reads a %s file as one plugin, and Palisade must be chained after "+
			"the main plugin. Convert it into a conflist: write {\"cniVersion\": <its cniVersion>, \"name\": <its name>, "+
			"\"plugins\": [<the file's object>]} to a file of the same name ending in .conflist, remove the %s file, "+
			"and run the installer again", name, ErrNotConflist, ext, ext)
	}
	l, err := parse(name, data)
	if err != nil {
		return nil, false, err
	}
	if len(l.plugins) == 0 {
		return nil, false, fmt.Errorf("%s: %w: its plugins list is empty", name, ErrNotConflist)
	}
	for i, typ := range l.types {
		if typ == PluginType {
			if i == 0 {
				return nil, false, fmt.Errorf("%s: palisade is the first plugin; it must follow the main plugin, whose result it reads", name)
			}
			return data, false, nil
		}
	}
	if err := checkMain(name, l, opts); err != nil {
		return nil, false, err
	}
	last := l.plugins[len(l.plugins)-1]
	// The separator before the last element (",\n    " in Flannel's file)
	// keeps the new entry in the document's own style.
	var sep []byte
	if n := len(l.plugins); n > 1 {
		sep = data[l.plugins[n-2][1]:l.plugins[n-1][0]]
	} else {
		sep = append([]byte(","), data[l.open+1:last[0]]...)
	}
	out = make([]byte, 0, len(data)+len(sep)+len(entry))
	out = append(out, data[:last[1]]...)
	out = append(out, sep...)
	out = append(out, entry...)
	out = append(out, data[last[1]:]...)
	if err := sameExceptPalisade(data, out); err != nil {
		return nil, false, fmt.Errorf("%s: %w", name, err)
	}
	return out, true, nil
}

// checkMain refuses a main plugin that gives pods no host-side veth.
func checkMain(name string, l *layout, opts Options) error {
	main := l.types[0]
	for _, t := range opts.AcceptMainPlugins {
		if t == main {
			return nil
		}
	}
	if why, ok := nonVethPlugins[main]; ok {
		return fmt.Errorf("%s: %w: %s; Palisade enforces policy on the host end of each pod's veth", name, ErrUnsupportedMainPlugin, why)
	}
	if !vethPlugins[main] {
		return fmt.Errorf("%s: %w: Palisade does not know main plugin %q; it works with flannel, bridge, ptp and weave-net. "+
			"If %q gives every pod a veth whose other end stays on the node, run the installer with --accept-main-plugin=%s",
			name, ErrUnsupportedMainPlugin, main, main, main)
	}
	if main == "flannel" {
		// Flannel delegates to bridge unless its delegate names another type.
		var delegate struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(l.raw[0]["delegate"], &delegate)
		if delegate.Type != "" && !vethPlugins[delegate.Type] {
			return fmt.Errorf("%s: %w: flannel delegates to %q, which gives pods no host-side veth", name, ErrUnsupportedMainPlugin, delegate.Type)
		}
	}
	return nil
}

// Unchain returns the conflist data without its palisade entry, removing
// exactly the bytes Chain added (the entry and the separator before it), and
// changed=false when there is no palisade entry.
func Unchain(name string, data []byte) (out []byte, changed bool, err error) {
	l, err := parse(name, data)
	if err != nil {
		return nil, false, err
	}
	for i, typ := range l.types {
		if typ != PluginType {
			continue
		}
		from, to := l.plugins[i][0], l.plugins[i][1]
		switch {
		case i > 0:
			from = l.plugins[i-1][1] // with the separator before it
		case len(l.plugins) > 1:
			to = l.plugins[1][0] // first: with the separator after it
		}
		out = append(append([]byte{}, data[:from]...), data[to:]...)
		return out, true, nil
	}
	return data, false, nil
}

// sameExceptPalisade checks that two documents differ only by palisade
// entries in their plugins, a guard against a splice in the wrong place.
func sameExceptPalisade(a, b []byte) error {
	strip := func(data []byte) (map[string]any, error) {
		var doc map[string]any
		if err := json.Unmarshal(data, &doc); err != nil {
			return nil, err
		}
		plugins, _ := doc["plugins"].([]any)
		kept := []any{}
		for _, p := range plugins {
			if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
				continue
			}
			kept = append(kept, p)
		}
		doc["plugins"] = kept
		return doc, nil
	}
	da, err := strip(a)
	if err != nil {
		return fmt.Errorf("re-read original: %w", err)
	}
	db, err := strip(b)
	if err != nil {
		return fmt.Errorf("splice produced invalid JSON: %w", err)
	}
	ja, _ := json.Marshal(da)
	jb, _ := json.Marshal(db)
	if !bytes.Equal(ja, jb) {
		return errors.New("splice changed more than the palisade entry")
	}
	return nil
}
