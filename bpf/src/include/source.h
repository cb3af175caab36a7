/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Whose packet is it: what a pod may send in its own name, checked on
 * pal_from_pod before any policy. Policy judges a flow by its source's
 * identity, so a source the pod does not own would borrow another pod's (or
 * the node's) rights; ARP and neighbour discovery claiming another address
 * would steal that address's traffic on the node's bridge. Everything here
 * is dropped with REASON_SPOOFED:
 *   - an IPv4 or IPv6 packet whose source is not one of the endpoint's
 *     addresses;
 *   - ARP whose sender protocol address is not one of them (0.0.0.0, an
 *     address probe, passes);
 *   - neighbour discovery and multicast listener discovery that is not
 *     link-scoped: ND (133-136) must carry hop limit 255 and go to a
 *     multicast address or a neighbour on the pod's link (nd_on_link); MLD
 *     must go to multicast; a neighbour advertisement may only advertise
 *     the pod's own or a link-local address; router advertisements and
 *     redirects are for routers, which a pod is not. These may come from a
 *     link-local address or from :: (duplicate address detection), which
 *     are not in the endpoint entry.
 * And on pal_to_pod, ND that crossed a router (check_nd_routed). */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "verdict.h"
#include "service.h" /* addr_eq */

#define ICMPV6_ROUTER_ADVERT 134
#define ICMPV6_NEIGH_ADVERT 136
#define ICMPV6_REDIRECT 137
#define ND_HOP_LIMIT 255 /* RFC 4861: proves the sender is on the link */

#define ARP_OP_OFF 6
#define ARP_SPA_OFF 14 /* after htype, ptype, hlen, plen, oper and sha */
#define ARP_TPA_OFF 24

enum source_verdict {
	SOURCE_OK,
	SOURCE_SPOOFED,
	SOURCE_MALFORMED,
};

/* ep_owns reports whether addr (16 bytes, IPv4-mapped for IPv4) is one of
 * the endpoint's addresses. */
static __always_inline int ep_owns(const struct endpoint_info *ep, const __u8 *addr)
{
#pragma unroll
	for (int i = 0; i < EP_MAX_ADDRS; i++) {
		if (i >= ep->naddrs)
			break;
		if (addr_eq(ep->addrs[i], addr))
			return 1;
	}
	return 0;
}

static __always_inline int ipv6_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

static __always_inline int ipv6_multicast(const __u8 *a)
{
	return a[0] == 0xff;
}

static __always_inline int ipv6_unspecified(const __u8 *a)
{
	__u8 zero[16] = {};

	return addr_eq(a, zero);
}

/* nd_source_ok: the link-scoped addresses ND and MLD may come from, besides
 * the endpoint's own. */
static __always_inline int nd_source_ok(const struct endpoint_info *ep, const struct flow *f)
{
	return ep_owns(ep, f->saddr) || ipv6_link_local(f->saddr) || ipv6_unspecified(f->saddr);
}

/* nd_header reads the ICMPv6 type and the IPv6 hop limit of an ND or MLD
 * message. */
static __always_inline int nd_header(struct __sk_buff *skb, const struct flow *f, __u8 *type, __u8 *hop_limit)
{
	if (bpf_skb_load_bytes(skb, f->l4_off, type, 1) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, hop_limit), hop_limit, 1) < 0)
		return -1;
	return 0;
}

static __always_inline int ipv4_mapped(const __u8 *a)
{
	__u64 hi;

	__builtin_memcpy(&hi, a, 8);
	return hi == 0 && a[8] == 0 && a[9] == 0 && a[10] == 0xff && a[11] == 0xff;
}

/* nd_on_link reports whether a unicast ND destination is on the pod's
 * link: link-local, the node (its gateway), or in the /64 of one of the
 * pod's IPv6 addresses, where its neighbours on the node's bridge are. A
 * solicited advertisement goes to the soliciting neighbour's own address,
 * and Linux probes a neighbour's reachability at its global address, so
 * link-local and multicast alone would cut pods off from each other. */
static __always_inline int nd_on_link(const struct endpoint_info *ep, const struct flow *f)
{
	__u64 dst, own;

	if (ipv6_link_local(f->daddr) || ipv6_multicast(f->daddr))
		return 1;
	__builtin_memcpy(&dst, f->daddr, 8);
#pragma unroll
	for (int i = 0; i < EP_MAX_ADDRS; i++) {
		if (i >= ep->naddrs)
			break;
		__builtin_memcpy(&own, ep->addrs[i], 8);
		if (own == dst && !ipv4_mapped(ep->addrs[i]))
			return 1;
	}
	return ipcache_identity(f->daddr) == ID_HOST;
}

/* check_nd judges an ICMPv6 ND or MLD message (f->nd) the pod sends. */
static __always_inline int check_nd(struct __sk_buff *skb, const struct endpoint_info *ep,
				    const struct flow *f)
{
	__u8 type, hop_limit, target[16];

	if (nd_header(skb, f, &type, &hop_limit) < 0)
		return SOURCE_MALFORMED;
	if (!nd_source_ok(ep, f))
		return SOURCE_SPOOFED;
	if (type < ICMPV6_ND_FIRST || type > ICMPV6_ND_LAST)
		/* Multicast listener discovery. */
		return ipv6_multicast(f->daddr) ? SOURCE_OK : SOURCE_SPOOFED;
	if (type == ICMPV6_ROUTER_ADVERT || type == ICMPV6_REDIRECT || hop_limit != ND_HOP_LIMIT)
		return SOURCE_SPOOFED;
	if (!nd_on_link(ep, f))
		return SOURCE_SPOOFED;
	if (type == ICMPV6_NEIGH_ADVERT) {
		/* The target follows the 4-byte flags after the ICMPv6 header. */
		if (bpf_skb_load_bytes(skb, f->l4_off + 8, target, 16) < 0)
			return SOURCE_MALFORMED;
		if (!ep_owns(ep, target) && !ipv6_link_local(target))
			return SOURCE_SPOOFED;
	}
	return SOURCE_OK;
}

/* check_nd_routed judges ND (not MLD) a pod receives: with a hop limit
 * below 255 it crossed a router, so no neighbour's ND accepts it (RFC
 * 4861), and only a raw socket would read it: a way round the receiver's
 * policy, since ND is not policy's to judge. */
static __always_inline int check_nd_routed(struct __sk_buff *skb, const struct flow *f)
{
	__u8 type, hop_limit;

	if (nd_header(skb, f, &type, &hop_limit) < 0)
		return SOURCE_MALFORMED;
	if (type >= ICMPV6_ND_FIRST && type <= ICMPV6_ND_LAST && hop_limit != ND_HOP_LIMIT)
		return SOURCE_SPOOFED;
	return SOURCE_OK;
}

/* check_arp judges an ARP packet the pod sends; it fills f with the sender
 * and target protocol addresses, for the drop's event. */
static __always_inline int check_arp(struct __sk_buff *skb, const struct endpoint_info *ep, struct flow *f)
{
	struct {
		__be16 htype;
		__be16 ptype;
		__u8 hlen;
		__u8 plen;
	} hdr;
	__be32 spa, tpa;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &hdr, sizeof(hdr)) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + ARP_SPA_OFF, &spa, 4) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + ARP_TPA_OFF, &tpa, 4) < 0)
		return SOURCE_MALFORMED;
	map_v4(f->saddr, spa);
	map_v4(f->daddr, tpa);
	/* Only IPv4 over Ethernet: a pod has no other protocol to resolve. */
	if (hdr.ptype != bpf_htons(ETH_P_IP) || hdr.hlen != ETH_ALEN || hdr.plen != 4)
		return SOURCE_MALFORMED;
	if (spa == 0)
		return SOURCE_OK; /* a probe (RFC 5227) claims nothing */
	return ep_owns(ep, f->saddr) ? SOURCE_OK : SOURCE_SPOOFED;
}

/* check_source judges the source of an IP packet the pod sends. */
static __always_inline int check_source(struct __sk_buff *skb, const struct endpoint_info *ep,
					const struct flow *f)
{
	if (f->nd)
		return check_nd(skb, ep, f);
	return ep_owns(ep, f->saddr) ? SOURCE_OK : SOURCE_SPOOFED;
}

/* from_pod_is_arp reports whether a frame parse_packet did not take as IP
 * is ARP. Other non-IP frames are left alone: the bridge may carry them to
 * the neighbours, but no IP stack takes them, and nothing routes them. */
static __always_inline int from_pod_is_arp(struct __sk_buff *skb)
{
	__be16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2) < 0)
		return 0;
	return proto == bpf_htons(ETH_P_ARP);
}
