// Package events reads the datapath's verdict ring buffer and turns each
// event into a Flow: pod and namespace names, ports, protocol, direction,
// and the policy rule that allowed it or why it was dropped. Flows go to a
// Hub that keeps the recent ones and streams new ones to palisadectl, to
// debug logs, and to a counter.
//
// It reads the compiled policy only through inspect.View; it must not
// import the controller or informers.
package events
