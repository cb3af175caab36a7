// Package soak is Palisade's chaos soak: a two-node testbed on which agents
// are SIGKILLed at random points and restarted, the API server restarts,
// pods and policies churn and Flannel's conflist is rewritten over the
// chained one, while probe loops run. It checks that no forbidden
// connection is ever admitted, that no established allowed flow is cut by
// any of it, that nothing leaks (endpoints, pins, map entries) and that
// every pod is managed at the end. `make soak` runs it (DURATION); the
// figures go to README "Reliability".
//
// The package is test support: product code must never import it.
package soak
