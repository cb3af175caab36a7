// Package inspect answers palisadectl's questions from the agent's last
// compiled policy: which rules a pod has, in words and as map entries, what
// an address is, and what the datapath would do with a flow and why.
//
// It judges with the compiler's own Result.Allows and Result.IdentityOf, the
// functions the datapath's maps are written from, and only attributes the
// verdict to policy rules: it is not a second evaluator. It must not import
// bpf or informers; map entries reach it through a function.
package inspect
