/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Conntrack: flows seen by an endpoint, keyed by the 5-tuple of the flow's
 * first packet and the direction of the hook that admitted it, or by the
 * reverse of both (its replies' tuple and direction), whichever orders
 * first (ct_key_canon in verdict.h): a packet either way finds its flow
 * with one lookup. Written and read by both programs; the agent only reads
 * it. Keying by direction keeps the two endpoints of a node-local flow
 * apart: each judges its own side.
 *
 * TCP flows and all others live in separate LRU tables, so that a pod
 * flooding the node with new UDP (or ICMP, or any other protocol's) flows
 * evicts only entries of that table, never an established TCP connection.
 * The sizes below are the defaults; the agent sizes both tables at load
 * time from the node's memory or its flags. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "parse.h"

/* Cilium's defaults: 512k TCP + 256k other entries. */
#define MAX_CT_TCP 524288
#define MAX_CT_OTHER 262144

struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

#define CT_F_NAT (1 << 0) /* replies get their source rewritten to nat_addr */
/* A flow to a Service, keyed by the tuple the pod sent (before translation)
 * in DIR_EGRESS: nat_addr and nat_port are the backend it was given, and
 * revision the endpoint revision at which the translated flow's own entry
 * (keyed by the backend's tuple, CT_F_NAT) was last judged and found live.
 * A packet of an established Service flow finds it with the one lookup
 * any packet the pod sends makes first, and is translated without the
 * Service tables. Never the entry of a reply: replies match the translated
 * flow's entry. */
#define CT_F_SERVICE (1 << 1)
/* A flow to a Service that leads only to the pod itself, left to
 * kube-proxy untranslated: a pod's traffic with itself, never re-judged. */
#define CT_F_SELF (1 << 2)
/* The flow's first packet went against its key: the key holds the tuple of
 * its replies, and their direction (ct_key_canon in verdict.h). */
#define CT_F_REVERSED (1 << 3)

struct ct_entry {
	__u64 expires;  /* clock_now() deadline (verdict.h) */
	__u64 revision; /* endpoint revision that admitted the flow */
	__u32 ifindex;  /* endpoint that admitted the flow */
	__u32 rule;
	/* CT_F_SERVICE (or an older version's DIR_SERVICE) entry: the backend
	 * the flow was given. CT_F_NAT entry: the Service address its replies
	 * must appear to come from. */
	__u8 nat_addr[16];
	__be16 nat_port;
	__u16 flags; /* CT_F_* */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT_TCP);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_flows_tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT_OTHER);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_flows_other SEC(".maps");

/* pal_ct_stats: per-CPU counters, per table, of the keys the programs
 * added to it (CT_STAT_CREATED: the key was absent) and removed from it
 * (CT_STAT_DELETED). Nothing else adds or removes entries but the LRU,
 * when it takes an entry (live or expired) to make room; so what a table
 * holds, subtracted from created - deleted, is what the LRU reclaimed. The
 * agent reads them for palisade_conntrack_reclaimed_total. CT_STAT_TCP_MISS
 * counts TCP packets without SYN that found no entry: connections whose
 * entry was reclaimed while still in use (and late packets of closed
 * connections, forged ones, connections older than the datapath).
 * Index: table * CT_STAT_PER_TABLE + counter. */
#define CT_TABLE_TCP 0
#define CT_TABLE_OTHER 1
#define CT_STAT_CREATED 0
#define CT_STAT_DELETED 1
#define CT_STAT_PER_TABLE 2
#define CT_STAT_TCP_MISS 4
#define CT_STAT_MAX 5

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ct_stats SEC(".maps");

static __always_inline void ct_stat(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&pal_ct_stats, &index);

	if (n)
		*n += 1;
}

static __always_inline __u32 ct_table(const struct ct_key *k)
{
	return k->proto == IPPROTO_TCP ? CT_TABLE_TCP : CT_TABLE_OTHER;
}

/* ct_lookup keeps one call per table: merged into one call on a map chosen
 * at run time (which the compiler does for the plain if/else), a lookup is
 * not inlined by the verifier, which costs every packet a helper call. The
 * asm statements differ, so the calls before them cannot be merged. */
static __always_inline struct ct_entry *ct_lookup(const struct ct_key *k)
{
	struct ct_entry *e;

	if (k->proto == IPPROTO_TCP) {
		e = bpf_map_lookup_elem(&pal_flows_tcp, k);
		asm volatile("/* tcp */" : "+r"(e));
	} else {
		e = bpf_map_lookup_elem(&pal_flows_other, k);
		asm volatile("/* other */" : "+r"(e));
	}
	return e;
}

static __always_inline long ct_update(const struct ct_key *k, const struct ct_entry *e, __u64 flags)
{
	if (k->proto == IPPROTO_TCP)
		return bpf_map_update_elem(&pal_flows_tcp, k, e, flags);
	return bpf_map_update_elem(&pal_flows_other, k, e, flags);
}

/* ct_store writes the entry of key k, counting it when the key is new (an
 * expired entry under the same key is overwritten, not counted). */
static __always_inline void ct_store(const struct ct_key *k, const struct ct_entry *e)
{
	if (ct_update(k, e, BPF_NOEXIST) == 0) {
		ct_stat(ct_table(k) * CT_STAT_PER_TABLE + CT_STAT_CREATED);
		return;
	}
	ct_update(k, e, BPF_ANY);
}

static __always_inline void ct_delete(const struct ct_key *k)
{
	long err;

	if (k->proto == IPPROTO_TCP)
		err = bpf_map_delete_elem(&pal_flows_tcp, k);
	else
		err = bpf_map_delete_elem(&pal_flows_other, k);
	if (err == 0)
		ct_stat(ct_table(k) * CT_STAT_PER_TABLE + CT_STAT_DELETED);
}

/* ct_missed counts a TCP packet that belongs to no known flow although it
 * is not a connection's first (no SYN, and not a later fragment, which
 * has no flags). */
static __always_inline void ct_missed(const struct flow *f)
{
	if (f->proto == IPPROTO_TCP && !(f->tcp_flags & TCP_FLAG_SYN) && f->frag < FRAG_LATER)
		ct_stat(CT_STAT_TCP_MISS);
}
