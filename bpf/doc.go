// Package bpf loads, pins and attaches Palisade's eBPF programs and names
// their maps and key/value types. The programs sit on the host-side veth of
// each pod: pal_from_pod on tc ingress (the pod's egress) and pal_to_pod on tc
// egress (the pod's ingress).
//
// The agent owns every kernel object: it loads the programs and maps and pins
// them under a bpffs root (default /sys/fs/bpf/palisade); the CNI plugin only
// opens the pinned programs and attaches them to a new interface.
//
// This package imports only cilium/ebpf, netlink and the standard library; it
// knows nothing of Kubernetes or policy.
package bpf
