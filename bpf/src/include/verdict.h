/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Conntrack and policy lookups: how one packet is judged. */
#pragma once

#include "maps.h"
#include "parse.h"
#include "conntrack.h"

/* Set by the agent before load (spec.Variables). */
volatile const __u8 rejudge = 1; /* re-judge flows when the policy revision changes */
volatile const __u8 coarse_clock = 0; /* the kernel has bpf_ktime_get_coarse_ns (5.11) */

#define NSEC 1000000000ULL
#define CT_TCP_SYN (60 * NSEC)
#define CT_TCP_FIN (10 * NSEC)
#define CT_TCP_ESTABLISHED (6 * 3600 * NSEC)
#define CT_OTHER (60 * NSEC)

/* clock_now is the time deadlines count in: conntrack, fragments, Service
 * affinity. Where the kernel has it, the coarse monotonic clock: the same
 * clock as bpf_ktime_get_ns at the last tick, so at most a tick (1-10 ms)
 * behind, which no deadline of seconds notices. It is read from memory;
 * bpf_ktime_get_ns reads the TSC, which costs each packet ~30 ns on a VM
 * (perf, BenchmarkPrivilegedConnect: a tenth of a connection's program
 * time). The verifier drops the branch not taken, so an older kernel never
 * sees the helper it lacks. */
static __always_inline __u64 clock_now(void)
{
	if (coarse_clock)
		return bpf_ktime_get_coarse_ns();
	return bpf_ktime_get_ns();
}

static __always_inline __u64 ct_lifetime(const struct flow *f)
{
	if (f->proto != IPPROTO_TCP)
		return CT_OTHER;
	if (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return CT_TCP_FIN;
	if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return CT_TCP_SYN;
	return CT_TCP_ESTABLISHED;
}

/* ct_refresh moves e's deadline to now + lifetime, but only when that moves
 * it by a second or more: a write on every packet would dirty the entry's
 * cache line on every packet, and bounce it between CPUs when the two
 * directions of a flow are handled on different ones. A flow may so expire
 * up to a second before its lifetime after its last packet. It returns 1
 * when it wrote. */
static __always_inline int ct_refresh(struct ct_entry *e, __u64 now, __u64 lifetime)
{
	__u64 expires = now + lifetime;

	if (expires - e->expires < NSEC || e->expires - expires < NSEC)
		return 0;
	e->expires = expires;
	return 1;
}

static __always_inline void ct_key_forward(struct ct_key *k, const struct flow *f, __u8 dir)
{
	__builtin_memcpy(k->saddr, f->saddr, 16);
	__builtin_memcpy(k->daddr, f->daddr, 16);
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
	k->dir = dir;
	k->pad = 0;
}

/* ct_key_canon turns k, the key of a packet's own tuple in its direction,
 * into the key of its flow, which the flow's packets both ways find with
 * one lookup: of k and its reverse (source and destination swapped, the
 * other direction: a reply's key), the one whose source (address, port)
 * orders first. It returns 1 when that is the reverse. Before, a packet that was
 * not its flow's first looked up its own tuple and then, on a miss, the
 * reverse: two lookups for every new flow and every reply, each a cache
 * miss in a large table. A tuple whose ends are equal is its own reverse;
 * its egress direction is then the one keyed. */
static __always_inline int ct_key_canon(struct ct_key *k)
{
	const __u32 *s = (const __u32 *)k->saddr, *d = (const __u32 *)k->daddr;
	int rev = 0, i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		if (s[i] != d[i]) {
			rev = s[i] > d[i];
			goto decided;
		}
	}
	if (k->sport != k->dport)
		rev = k->sport > k->dport;
	else
		rev = k->dir == DIR_INGRESS;
decided:
	if (rev) {
		__u8 a[16];
		__be16 port = k->sport;

		__builtin_memcpy(a, k->saddr, 16);
		__builtin_memcpy(k->saddr, k->daddr, 16);
		__builtin_memcpy(k->daddr, a, 16);
		k->sport = k->dport;
		k->dport = port;
		k->dir ^= 1;
	}
	return rev;
}

/* ct_key_flow is the key of the flow f belongs to when it crosses an
 * endpoint in direction dir; *rev tells whether f goes against the key
 * (ct_key_canon). */
static __always_inline void ct_key_flow(struct ct_key *k, const struct flow *f, __u8 dir, int *rev)
{
	ct_key_forward(k, f, dir);
	*rev = ct_key_canon(k);
}

/* ct_entry_flags are the flags of the entry a flow gets when its first
 * packet went against its key (rev): CT_F_REVERSED. */
static __always_inline __u16 ct_entry_flags(int rev)
{
	return rev ? CT_F_REVERSED : 0;
}

/* ct_find returns the live entry of the flow packet p belongs to when it
 * crosses endpoint ifindex in direction dir, found with one lookup of its
 * flow's key (ct_key_flow), and sets *fwd to 1 when p goes the way the
 * flow's first packet went, 0 when p is a reply. key is left holding the
 * flow's key and *rev whether p goes against it, found or not: a new flow's
 * entry is stored under them. */
static __always_inline struct ct_entry *ct_find(const struct flow *p, __u8 dir, __u32 ifindex,
						__u64 now, struct ct_key *key, int *rev, int *fwd)
{
	struct ct_entry *ct;

	ct_key_flow(key, p, dir, rev);
	ct = ct_lookup(key);
	if (!ct || ct->ifindex != ifindex || ct->expires <= now)
		return 0;
	*fwd = *rev == !!(ct->flags & CT_F_REVERSED);
	return ct;
}

static __always_inline __u32 ipcache_identity(const __u8 *addr)
{
	struct ipcache_key k = {.prefixlen = 128};
	struct ipcache_value *v;

	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&pal_ipcache, &k);
	return v ? v->identity : ID_WORLD;
}

/* peer_identity is the identity of the other end of f, seen from the
 * endpoint in direction dir. */
static __always_inline __u32 peer_identity(const struct flow *f, __u8 dir)
{
	return ipcache_identity(dir == DIR_EGRESS ? f->daddr : f->saddr);
}

/* policy_allows judges the first packet of a flow of an endpoint, in dir,
 * with a peer of identity peer. It returns 1 and the matching rule when some
 * policy allows it, 0 when none does or an entry denies (then *rule names the
 * denying rule). The precedence, from the API's definition:
 *   1. A direction no policy isolates allows everything.
 *   2. A rule naming the peer's identity (with the port, the protocol, or
 *      all ports) allows it.
 *   3. A rule with a wildcard peer (from: [], to: [], or none) allows it.
 *   4. Anything else is dropped.
 * An entry may deny (POLICY_F_DENY): the admin tiers are folded into the
 * entries by the agent, so their order costs no extra lookup. Traffic with
 * the pod's own node (ID_HOST) is allowed by an entry the agent writes in
 * every direction a NetworkPolicy isolates, not here: an admin tier that
 * denies the node must be able to come first. */
static __always_inline int policy_allows(const struct endpoint_info *ep, __u8 dir,
					 __u32 peer, const struct flow *f, __u32 *rule)
{
	__u32 isolated = dir == DIR_INGRESS ? EP_F_INGRESS_ISOLATED : EP_F_EGRESS_ISOLATED;
	struct policy_key k = {
		.prefixlen = 128,
		.rule_set = ep->rule_set,
		.dir = dir,
		.identity = peer,
		.proto = f->proto,
		.port_net = f->dport,
	};
	struct policy_value *v;

	*rule = 0;
	if (!(ep->flags & isolated))
		return 1;
	v = bpf_map_lookup_elem(&pal_set_rules, &k);
	if (!v) {
		k.identity = ID_ANY;
		v = bpf_map_lookup_elem(&pal_set_rules, &k);
	}
	if (!v)
		return 0;
	*rule = v->rule;
	return !(v->flags & POLICY_F_DENY);
}
