// Package hostile holds the end-to-end tests of what a hostile pod can try
// against NetworkPolicy on the testbed: claiming another pod's or the node's
// address, reaching a backend through a NodePort, an externalIP or a node
// address, neighbour discovery to places it does not belong, fragments and
// floods of new flows. Each test names the attack and asserts what the
// attacker gets, on both kube-proxy modes where kube-proxy takes part.
package hostile
