// Package install puts Palisade into a node's CNI configuration and takes it
// out again: it copies the palisade plugin into the CNI binary directory,
// chains {"type": "palisade"} after the main plugin of the conflist the
// kubelet reads, and, on uninstall, reverses both and removes the agent's
// pinned programs, maps and state.
//
// Edits to the conflist are splices into the original bytes, never a
// re-marshalled document: the file belongs to another CNI (Flannel writes
// 10-flannel.conflist), and its comments-free but hand-formatted JSON, key
// order and every field we do not understand must survive us exactly.
//
// It imports no Kubernetes package: it runs as an init container before the
// agent has credentials to anything.
package install
