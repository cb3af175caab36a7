package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/palisade-cni/palisade/tests/packet"
)

// FuzzPrivilegedClassify runs pal_to_pod through BPF_PROG_TEST_RUN on
// random frames and on well-formed ones truncated and overwritten at
// random. The subject is isolated for ingress and admits TCP 6379 from
// peerIP's identity, UDP 53 from anyone and everything from the node (the
// entry the agent writes where NetworkPolicy isolates). Whatever the bytes, the run
// must not fail, and a frame the program passes must be one the kernel
// would drop anyway, or not IP, or one the rules admit read the way the
// kernel's stack reads it (kernelView): never an allow the rules deny.
// Conntrack and fragment state are cleared after every frame, so that
// each frame is judged as a flow's first.
func FuzzPrivilegedClassify(f *testing.F) {
	fx := newFixture(f)
	rules := [][]PolicyEntry{}
	for _, r := range []struct {
		peer  uint32
		proto uint8
		ports PortRange
	}{{peerID, tcp, PortRange{6379, 6379}}, {IdentityAny, udp, PortRange{53, 53}}, {IdentityHost, 0, PortRange{}}} {
		keys, err := PolicyKeys(r.peer, r.proto, r.ports)
		if err != nil {
			f.Fatal(err)
		}
		var es []PolicyEntry
		for _, k := range keys {
			es = append(es, PolicyEntry{Key: k, Value: PolicyValue{Rule: 7}})
		}
		rules = append(rules, es)
	}
	if err := fx.objs.SetPolicy(fx.set(), ToPod, slices.Concat(rules...)); err != nil {
		f.Fatal(err)
	}
	info := EndpointInfo{Revision: 1, Identity: 299, Flags: FlagIngressIsolated, RuleSet: fx.set()}
	if err := info.SetAddrs([]netip.Addr{subjectIP, subject6}); err != nil {
		f.Fatal(err)
	}
	if err := fx.objs.SetEndpoint(fx.ifindex, info); err != nil {
		f.Fatal(err)
	}

	seeds := []packet.Packet{
		{Src: peerIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 6379, TCPFlags: syn},
		{Src: otherIP, Dst: subjectIP, Proto: tcp, SrcPort: 40000, DstPort: 6379, TCPFlags: syn},
		{Src: worldIP, Dst: subjectIP, Proto: udp, SrcPort: 1, DstPort: 53},
		{Src: worldIP, Dst: subjectIP, Proto: udp, SrcPort: 1, DstPort: 54},
		{Src: otherIP, Dst: subjectIP, Proto: icmp, ICMPType: 8, SrcPort: 1},
		{Src: peer6, Dst: subject6, Proto: tcp, SrcPort: 40000, DstPort: 6379, TCPFlags: syn},
		{Src: peer6, Dst: subject6, Proto: tcp, SrcPort: 40000, DstPort: 6380, TCPFlags: syn, HopByHop: true},
		{Src: peer6, Dst: subject6, Proto: udp, SrcPort: 40000, DstPort: 53},
	}
	for _, p := range seeds {
		frame := p.Frame()
		f.Add(frame, uint16(0), []byte{})
		f.Add(frame, uint16(len(frame)-1), []byte{})
		f.Add(frame, uint16(0), []byte{34, 0x18, 35, 0xeb}) // IPv4 TCP: port 6379 over another
		f.Add(frame, uint16(0), []byte{14, 0x46})           // IPv4: options the header does not hold
	}
	f.Fuzz(func(t *testing.T, frame []byte, cut uint16, edits []byte) {
		// edits are (offset, value) pairs overwritten into the frame.
		frame = append([]byte(nil), frame...)
		for i := 0; i+1 < len(edits) && len(frame) > 0; i += 2 {
			frame[int(edits[i])%len(frame)] = edits[i+1]
		}
		if cut > 0 && int(cut) < len(frame) {
			frame = frame[:cut]
		}
		if len(frame) < 14 {
			return // BPF_PROG_TEST_RUN wants at least an Ethernet header
		}
		var ret uint32
		err := fx.netns.Do(func(ns.NetNS) error {
			var err error
			ret, _, err = fx.objs.Classify(ToPod, fx.ifindex, frame)
			return err
		})
		if errors.Is(err, syscall.EINVAL) {
			// The kernel makes no skb of it (an IP ethertype with no room
			// for the header, say): no packet, nothing to judge.
			return
		}
		if err != nil {
			t.Fatalf("run pal_to_pod on %x: %v", frame, err)
		}
		if err := fx.forget(); err != nil {
			t.Fatal(err)
		}
		if ret != tcActOK {
			return // dropping is always safe
		}
		if why := deniedPassed(frame); why != "" {
			t.Fatalf("pal_to_pod passed a frame the rules deny: %s\n%x", why, frame)
		}
	})
}

// forget clears conntrack and fragment state.
func (f *fixture) forget() error {
	for _, m := range []*ebpf.Map{f.objs.objs.PalFlowsTcp, f.objs.objs.PalFlowsOther, f.objs.objs.PalFrag} {
		if err := clearMap(m); err != nil {
			return err
		}
	}
	return nil
}

func clearMap(m *ebpf.Map) error {
	key := make([]byte, m.KeySize())
	for {
		err := m.NextKey(nil, &key)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
}

// kernelView is how the kernel's stack would read a frame the program
// passed: whether it delivers it at all and, if so, the source, the
// transport protocol, its destination port and ICMP type.
type kernelView struct {
	deliver  bool
	src      netip.Addr
	proto    uint8
	dport    uint16
	icmpType uint8
}

// deniedPassed returns why a passed frame breaks the rules, or "".
func deniedPassed(frame []byte) string {
	v, ok := readAsKernel(frame)
	if !ok || !v.deliver {
		return ""
	}
	switch {
	case v.src == nodeIP:
		return "" // the node is always allowed
	case v.src == subjectIP || v.src == subject6:
		return "" // the pod's own traffic
	case v.proto == udp && v.dport == 53:
		return ""
	case v.proto == tcp && v.dport == 6379 && (v.src == peerIP || v.src == peer6):
		return ""
	case v.proto == packet.ICMPv6 && v.icmpType >= 133 && v.icmpType <= 137:
		return "" // neighbour discovery is the link's, not policy's
	}
	return fmt.Sprintf("src %s proto %d dport %d icmp type %d", v.src, v.proto, v.dport, v.icmpType)
}

// readAsKernel reads frame as the receive path does, conservatively: ok
// is false for a frame that is not IP (no policy applies), and deliver is
// false for one the stack drops by itself (bad header, truncated
// transport header) or cannot deliver alone (a fragment).
func readAsKernel(frame []byte) (kernelView, bool) {
	var v kernelView
	etherType := binary.BigEndian.Uint16(frame[12:])
	ip := frame[14:]
	var l4 []byte
	switch etherType {
	case 0x0800:
		if len(ip) < 20 || ip[0]>>4 != 4 {
			return v, true
		}
		hl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if hl < 20 || total < hl || total > len(ip) || packet.Checksum(ip[:hl]) != 0 {
			return v, true
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return v, true // a fragment: delivered only reassembled
		}
		v.src, v.proto, l4 = netip.AddrFrom4([4]byte(ip[12:16])), ip[9], ip[hl:total]
	case 0x86dd:
		if len(ip) < 40 || ip[0]>>4 != 6 {
			return v, true
		}
		payload := int(binary.BigEndian.Uint16(ip[4:]))
		if 40+payload > len(ip) {
			return v, true
		}
		v.src = netip.AddrFrom16([16]byte(ip[8:24]))
		next, rest := ip[6], ip[40:40+payload]
		// Extension headers the stack walks before the transport.
		for hops := 0; ; hops++ {
			if next == 0 || next == 43 || next == 60 {
				if len(rest) < 8 || hops > 8 {
					return v, true
				}
				n := (int(rest[1]) + 1) * 8
				if n > len(rest) {
					return v, true
				}
				next, rest = rest[0], rest[n:]
				continue
			}
			if next == 44 {
				return v, true // a fragment
			}
			break
		}
		v.proto, l4 = next, rest
	default:
		return v, false
	}
	switch v.proto {
	case tcp:
		if len(l4) < 20 || int(l4[12]>>4)*4 < 20 || int(l4[12]>>4)*4 > len(l4) {
			return v, true
		}
		v.dport = binary.BigEndian.Uint16(l4[2:])
	case udp:
		if len(l4) < 8 {
			return v, true
		}
		v.dport = binary.BigEndian.Uint16(l4[2:])
	case packet.SCTP:
		if len(l4) < 12 {
			return v, true
		}
		v.dport = binary.BigEndian.Uint16(l4[2:])
	case icmp, packet.ICMPv6:
		if len(l4) < 4 {
			return v, true
		}
		v.icmpType = l4[0]
	}
	v.deliver = true
	return v, true
}
