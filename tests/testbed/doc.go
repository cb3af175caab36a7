// Package testbed builds a real Kubernetes cluster out of network namespaces
// on one machine, for Palisade's end-to-end tests: etcd and kube-apiserver in
// a control-plane namespace on an underlay bridge, one namespace per node
// holding flanneld, the pod bridge and the CNI chain run through libcni, pods that
// answer on their declared container ports, and probes between them.
//
// Every address the testbed uses (underlay 198.18.0.0/24, pods 10.244.0.0/16,
// services 10.96.0.0/12) exists only inside namespaces it created; the test
// process reaches them by opening its sockets inside those namespaces, never
// through the host's own. Each helper takes a testing.TB and registers a
// Cleanup that removes what it created, by name or PID, on success and on
// failure.
//
// Nodes run real Flannel by default (PodNetwork): flanneld v0.25.7 with the
// kube subnet manager and the VXLAN (or host-gw) backend, and kube-flannel's
// own conflist, byte for byte, in the node's CNI conf dir, into which
// `palisade-agent install-cni` chains palisade. The pod runner reads that
// file from disk per sandbox, as a runtime does.
//
// Nodes share one filesystem, but the Flannel CNI plugin reads
// /run/flannel/subnet.env and keeps /var/lib/cni/flannel, host-local keeps
// /var/lib/cni/networks, and palisade, chained without options, dials
// /run/palisade/agent.sock: fixed paths, since the conflist may not change.
// So every Flannel node has a mount namespace of its own (mountView), a
// slave of the host's (sandboxes mounted later under /run/netns appear in
// it), in which those three directories are bind mounts of the node's
// directories. Where the host lacks a mount point, its parent is covered
// by a tmpfs holding binds of every original entry: nothing is created on
// the host. The CNI plugins run inside it, on a locked thread that enters
// the view and the node's netns and is brought back afterwards. flanneld
// itself runs outside it, told by --subnet-file and --net-config-path where
// the node's files are, and the agent by --socket.
//
// The package is test support: product code must never import it.
package testbed
