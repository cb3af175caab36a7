// Package testbed builds a real Kubernetes cluster out of network namespaces
// on one machine, for Palisade's end-to-end tests: etcd and kube-apiserver in
// a control-plane namespace on an underlay bridge, one namespace per node
// holding the pod bridge and the CNI chain run through libcni, pods that
// answer on their declared container ports, and probes between them.
//
// Every address the testbed uses (underlay 198.18.0.0/24, pods 10.244.0.0/16,
// services 10.96.0.0/12) exists only inside namespaces it created; the test
// process reaches them by opening its sockets inside those namespaces, never
// through the host's own. Each helper takes a testing.TB and registers a
// Cleanup that removes what it created, by name or PID, on success and on
// failure.
//
// The package is test support: product code must never import it.
package testbed
