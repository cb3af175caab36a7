package endpoint

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/palisade-cni/palisade/bpf"
)

// KernelLinkAlive checks an interface in the agent's own network namespace,
// the node's, where the host veths live. A link at index with another name
// is another interface that got the index: the endpoint's is gone.
func KernelLinkAlive(index int, name string) (bool, error) {
	l, err := netlink.LinkByIndex(index)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up interface %s (ifindex %d): %w", name, index, err)
	}
	return l.Attrs().Name == name, nil
}

// BPFAttacher attaches the programs pinned under Root.
type BPFAttacher struct {
	Root string
	Mode bpf.AttachMode
}

// Attach puts the programs on ifindex, pinning its links under id.
func (a BPFAttacher) Attach(ifindex int, id string) error {
	if _, err := bpf.Attach(a.Root, ifindex, id, a.Mode); err != nil {
		return fmt.Errorf("attach programs to ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Detach takes endpoint id's programs off ifindex and removes its pins.
func (a BPFAttacher) Detach(ifindex int, id string) error {
	if err := bpf.Detach(a.Root, ifindex, id); err != nil {
		return fmt.Errorf("detach programs from ifindex %d: %w", ifindex, err)
	}
	return nil
}
