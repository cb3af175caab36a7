/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdict events and counters: what the agent turns into flows, logs and
 * metrics. Every verdict is counted; drops are always offered to pal_events
 * and allowed flows only one in allow_sample_rate. Whatever is offered passes
 * a per-CPU budget of event_rate_limit events a second first, so a flood of
 * denied packets costs the node a counter increment each, never a ring
 * buffer write each, and can never starve the agent. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"

/* Set by the agent before load (spec.Variables). */
volatile const __u32 allow_sample_rate = 0; /* emit one allowed flow in N; 0: none */
volatile const __u32 event_rate_limit = 1000; /* events per second per CPU */

#define EVENT_WINDOW_NS 1000000000ULL

/* pal_verdicts: per-CPU verdict counters keyed by dir * REASON_MAX + reason
 * (dir is DIR_EGRESS or DIR_INGRESS). REASON_ALLOWED counts flows admitted by
 * policy (a flow's first packet), every other reason counts dropped packets.
 * Written by both programs; read by the agent for its metrics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_verdicts SEC(".maps");

/* pal_event_stats: per-CPU counters of events not delivered, by EV_LOST_*.
 * Written by both programs; read by the agent for its metrics. */
#define EV_LOST_RATE_LIMIT 0 /* over event_rate_limit this second */
#define EV_LOST_RINGBUF_FULL 1 /* the agent lags: pal_events is full */
#define EV_LOST_MAX 2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EV_LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_event_stats SEC(".maps");

/* pal_event_budget: per-CPU state of the event rate limit: the start of the
 * current one-second window and the events emitted in it. Only the programs
 * read and write it. */
struct event_budget {
	__u64 window;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
} pal_event_budget SEC(".maps");

static __always_inline void count_verdict(__u8 dir, __u8 reason)
{
	__u32 k = (__u32)(dir & 1) * REASON_MAX + (reason & (REASON_MAX - 1));
	__u64 *n = bpf_map_lookup_elem(&pal_verdicts, &k);

	if (n)
		*n += 1;
}

static __always_inline void count_lost(__u32 why)
{
	__u64 *n = bpf_map_lookup_elem(&pal_event_stats, &why);

	if (n)
		*n += 1;
}

/* event_budget_take returns 1 when this CPU may emit one more event in the
 * current window. */
static __always_inline int event_budget_take(__u64 now)
{
	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&pal_event_budget, &zero);

	if (!b)
		return 0;
	if (now - b->window >= EVENT_WINDOW_NS) {
		b->window = now;
		b->count = 0;
	}
	if (b->count >= event_rate_limit)
		return 0;
	b->count++;
	return 1;
}

/* emit_event offers one verdict to pal_events. rule is the policy rule that
 * allowed the flow, or the cluster policy rule that denied it (0 when no
 * rule decided: no isolation, or an isolated direction nothing allows). */
static __always_inline void emit_event(const struct __sk_buff *skb, const struct flow *f, __u8 dir,
				       __u8 reason, __u32 peer, __u32 rule)
{
	struct verdict_event *ev;
	__u64 now = bpf_ktime_get_ns();

	if (!event_budget_take(now)) {
		count_lost(EV_LOST_RATE_LIMIT);
		return;
	}
	ev = bpf_ringbuf_reserve(&pal_events, sizeof(*ev), 0);
	if (!ev) {
		count_lost(EV_LOST_RINGBUF_FULL);
		return;
	}
	ev->timestamp = now;
	__builtin_memcpy(ev->saddr, f->saddr, 16);
	__builtin_memcpy(ev->daddr, f->daddr, 16);
	ev->sport = f->sport;
	ev->dport = f->dport;
	ev->proto = f->proto;
	ev->dir = dir;
	ev->reason = reason;
	ev->pad = 0;
	ev->ifindex = skb->ifindex;
	ev->peer_identity = peer;
	ev->rule = rule;
	ev->pad2 = 0;
	bpf_ringbuf_submit(ev, 0);
}

/* allow_sampled counts a flow admitted by policy and says whether to offer
 * it as an event: one time in allow_sample_rate. */
static __always_inline int allow_sampled(__u8 dir)
{
	count_verdict(dir, REASON_ALLOWED);
	if (!allow_sample_rate)
		return 0;
	if (allow_sample_rate > 1 && bpf_get_prandom_u32() % allow_sample_rate)
		return 0;
	return 1;
}

/* emit_drop records a dropped packet: counted always, offered as an event
 * always (subject to the budget). */
static __always_inline void emit_drop(const struct __sk_buff *skb, const struct flow *f, __u8 dir,
				      __u8 reason, __u32 peer, __u32 rule)
{
	count_verdict(dir, reason);
	emit_event(skb, f, dir, reason, peer, rule);
}
