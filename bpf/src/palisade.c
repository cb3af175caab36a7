//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Palisade's datapath: two tc programs on the host-side veth of every pod.
 * pal_from_pod runs on tc ingress (the pod's egress), pal_to_pod on tc
 * egress (the pod's ingress). */

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "verdict.h"
#include "service.h"
#include "events.h"
#include "source.h"
#include "frag.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Emit into BTF, for bpf2go, the type no map definition names: the ring
 * buffer's event. */
const struct verdict_event *unused_verdict_event __attribute__((unused));

static __always_inline void count(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&pal_drops, &reason);

	if (n)
		*n += 1;
}

/* drop_rule drops, naming the rule that denied if one did. */
static __always_inline int drop_rule(struct __sk_buff *skb, const struct flow *f, __u8 dir, __u8 reason,
				     __u32 peer, __u32 rule)
{
	count(reason);
	emit_drop(skb, f, dir, reason, peer, rule);
	return TC_ACT_SHOT;
}

static __always_inline int drop(struct __sk_buff *skb, const struct flow *f, __u8 dir, __u8 reason,
				__u32 peer)
{
	return drop_rule(skb, f, dir, reason, peer, 0);
}

/* handle judges one packet seen by the endpoint on skb->ifindex.
 * A packet of a known flow costs one conntrack lookup, a reply included
 * (its flow's key is the same both ways: ct_key_canon), a packet to a
 * Service included: its translation is kept in conntrack.
 * Policy is consulted only for a flow's first packet, or when the policy
 * revision that admitted the flow is stale. */
static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow f = {}, inner = {};
	/* Zeroed: without CAP_PERFMON (the DaemonSet grants BPF and NET_ADMIN
	 * only) the verifier refuses a read of stack it cannot prove written,
	 * and it cannot tie frag_admit's FRAG_FIRST to frag_begin's. */
	struct frag_state fs = {};
	struct endpoint_info *ep;
	struct ct_entry *ct, *svc = 0, entry = {};
	struct ct_key key;
	__u32 ifindex = skb->ifindex, peer, rule, isolated;
	__u64 revision;
	__u8 vip[16];
	__be16 vport = 0;
	int ret, arp, lb = LB_NONE, fwd = 0, rev;
	__u64 now;

	ret = parse_packet(skb, &f, &inner);
	arp = ret == PARSE_NOT_IP && dir == DIR_EGRESS && from_pod_is_arp(skb);
	if (ret == PARSE_NOT_IP && !arp)
		return TC_ACT_OK;
	ep = bpf_map_lookup_elem(&pal_ep, &ifindex);
	if (!ep)
		return drop(skb, &f, dir, REASON_UNKNOWN_ENDPOINT, 0);
	if (ret == PARSE_MALFORMED)
		return drop(skb, &f, dir, REASON_MALFORMED, 0);
	/* What the pod sends must be its own to send, before policy judges
	 * it by its source; what it receives as ND must come from its link
	 * (source.h). */
	if (dir == DIR_EGRESS)
		ret = arp ? check_arp(skb, ep, &f) : check_source(skb, ep, &f);
	else
		ret = f.nd ? check_nd_routed(skb, &f) : SOURCE_OK;
	if (ret == SOURCE_SPOOFED)
		return drop(skb, &f, dir, REASON_SPOOFED, 0);
	if (ret == SOURCE_MALFORMED)
		return drop(skb, &f, dir, REASON_MALFORMED, 0);
	if (arp)
		return TC_ACT_OK;
	/* Neighbour discovery is the IPv6 equivalent of ARP: link-scoped, and
	 * the pod's checked above, it is not policy's to judge. */
	if (f.nd)
		return TC_ACT_OK;
	/* Read once: the agent may write the entry while this packet runs. */
	revision = ep->revision;

	now = clock_now();
	if (frag_begin(&fs, &f, dir, ifindex, now) < 0)
		return drop(skb, &f, dir, REASON_FRAGMENT, 0);

	/* An ICMP error belongs to the flow of the packet it quotes, which
	 * crossed this endpoint in the other direction. */
	if (f.icmp_error) {
		ct = ct_find(&inner, dir ^ 1, ifindex, now, &key, &rev, &fwd);
		if (ct && !(ct->flags & CT_F_SERVICE))
			return TC_ACT_OK;
	}

	/* Conntrack first, with the tuple as the pod sent it: a known flow,
	 * translated or not, needs no Service table. */
	ct = ct_find(&f, dir, ifindex, now, &key, &rev, &fwd);
	if (ct && (ct->flags & CT_F_SERVICE)) {
		/* Only what the pod sends goes to a Service address. */
		if (fwd && dir == DIR_EGRESS)
			svc = ct;
		ct = 0;
	}
	if (dir == DIR_EGRESS && !ct) {
		lb = lb_translate(skb, &f, ifindex, now, svc, vip, &vport);
		if (lb == LB_ERROR)
			return drop(skb, &f, dir, REASON_NAT, 0);
		if (lb == LB_TRANSLATED) {
			/* An established Service flow judged at this revision
			 * is done. Once its deadline moves, the translated
			 * flow's entry, which its replies need, moves too: the
			 * slow path below refreshes it, and judges the flow
			 * again should it have gone. */
			if (svc && (!rejudge || svc->revision == revision) && !ct_refresh(svc, now, ct_lifetime(&f))) {
				frag_admit(&fs, &f);
				return TC_ACT_OK;
			}
			ct = ct_find(&f, dir, ifindex, now, &key, &rev, &fwd);
		}
	}

	if (ct && fwd && rejudge && !(ct->flags & CT_F_SELF) && ct->revision != revision) {
		/* The policy changed since this flow was admitted here. */
		peer = peer_identity(&f, dir);
		if (!policy_allows(ep, dir, peer, &f, &rule)) {
			ct_delete(&key);
			return drop_rule(skb, &f, dir, REASON_REJUDGED, peer, rule);
		}
		ct->revision = revision;
		ct->rule = rule;
	}
	if (ct) {
		ct_refresh(ct, now, ct_lifetime(&f));
		/* A reply of a flow that was sent to a Service must come from
		 * the Service's address. */
		if (!fwd && (ct->flags & CT_F_NAT)) {
			__u8 addr[16];
			__be16 port = ct->nat_port;

			__builtin_memcpy(addr, ct->nat_addr, 16);
			if (nat_rewrite(skb, &f, 0, addr, port) < 0)
				return drop(skb, &f, dir, REASON_NAT, 0);
		}
		lb_admitted(svc, lb, &f, ifindex, now, revision, vip, vport);
		frag_admit(&fs, &f);
		return TC_ACT_OK;
	}

	ct_missed(&f);

	/* A pod reaching itself through its Service is left to kube-proxy,
	 * which translates and masquerades it; a pod's traffic with itself
	 * is allowed. The flow is still tracked so that its replies, which
	 * come back from the Service address, pass as replies. */
	rule = 0;
	peer = 0;
	/* The peer's identity is looked up only where policy judges: a
	 * direction no policy isolates allows every peer, and an event names
	 * the peer only when one is emitted. */
	isolated = ep->flags & (dir == DIR_INGRESS ? EP_F_INGRESS_ISOLATED : EP_F_EGRESS_ISOLATED);
	if (lb != LB_SELF && isolated) {
		peer = peer_identity(&f, dir);
		if (!policy_allows(ep, dir, peer, &f, &rule))
			return drop_rule(skb, &f, dir, REASON_POLICY, peer, rule);
	}

	/* key and rev are f's, from the last ct_find: it ran after any
	 * translation of f. */
	entry.expires = now + ct_lifetime(&f);
	entry.revision = revision;
	entry.ifindex = ifindex;
	entry.rule = rule;
	entry.flags = ct_entry_flags(rev);
	if (lb == LB_SELF)
		entry.flags |= CT_F_SELF;
	if (lb == LB_TRANSLATED) {
		entry.flags |= CT_F_NAT;
		entry.nat_port = vport;
		__builtin_memcpy(entry.nat_addr, vip, 16);
	}
	ct_store(&key, &entry);
	lb_admitted(svc, lb, &f, ifindex, now, revision, vip, vport);
	if (allow_sampled(dir)) {
		if (lb != LB_SELF && !isolated)
			peer = peer_identity(&f, dir);
		emit_event(skb, &f, dir, REASON_ALLOWED, peer, rule);
	}
	frag_admit(&fs, &f);
	return TC_ACT_OK;
}

SEC("tc")
int pal_from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

SEC("tc")
int pal_to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}
