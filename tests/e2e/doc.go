// Package e2e holds Palisade's end-to-end tests: a real kube-apiserver and
// etcd, nodes and pods as network namespaces plumbed by the real CNI chain
// through libcni, palisade-agent as a process, and real packets.
package e2e
