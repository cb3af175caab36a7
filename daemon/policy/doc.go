// Package policy compiles NetworkPolicies, pods, namespaces and nodes into
// what the datapath needs: the ipcache (address prefix -> identity) and, for
// each local endpoint, its isolation and its allow rules as (peer identity,
// protocol, port range).
//
// The semantics are those of networking.k8s.io/v1 NetworkPolicy; the API's
// own words are quoted where a rule is implemented. The package is pure: it
// imports no informers and no bpf, so every rule is tested by tables.
package policy
