// Package bench measures what Palisade costs on the testbed against a
// baseline without it, in one run (scripts/bench, make bench): datapath
// throughput, request/response rate and latency, new-connection and UDP
// rates at 0 to 10 000 policy rules; policy propagation; CNI ADD latency;
// leaks under pod churn; and the agent's own cost. The configurations are
// measured interleaved in rounds so machine noise hits all of them alike,
// and every median is reported as a ratio to the baseline of the same run.
//
// The load generators are plain Go sockets opened inside the pods'
// namespaces (testbed.NetNS.Dial/Listen): every byte stays in the testbed.
package bench
