/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Packet parsing: Ethernet, IPv4/IPv6, and the first bytes of TCP, UDP,
 * SCTP, ICMP and ICMPv6. Headers are copied with bpf_skb_load_bytes so that
 * non-linear skbs and IPv4 options need no special case. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PARAMPROB 4
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define ICMPV6_MLD_QUERY 130
#define ICMPV6_MLD_DONE 132
#define ICMPV6_MLD2_REPORT 143
#define ICMPV6_ND_FIRST 133 /* router solicitation */
#define ICMPV6_ND_LAST 137  /* redirect */

enum parse_result {
	PARSE_OK,
	PARSE_NOT_IP,    /* ARP and friends: not ours to judge */
	PARSE_MALFORMED, /* truncated header */
};

/* flow is one packet's tuple. For ICMP echo the identifier stands in both
 * ports, so a reply's tuple is the exact reverse of its request's. */
struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_error; /* ICMP error quoting the tuple in inner */
	__u8 nd;         /* ICMPv6 neighbour discovery or multicast listener discovery */
	__u8 ipv6;
	__u8 frag; /* FRAG_*: where the packet lies in a fragmented datagram */
	__u8 pad[2];
	__u32 l4_off;  /* offset of the transport header */
	__u32 frag_id; /* the datagram's identification, when fragmented */
};

/* A datagram's first fragment carries the transport header; the others
 * carry neither ports nor flags, and follow the first (see frag.h). An
 * unfragmented packet, or an IPv6 atomic fragment, is FRAG_NONE. */
#define FRAG_NONE 0
#define FRAG_FIRST 1 /* offset 0, more fragments follow */
#define FRAG_LATER 2 /* offset > 0, more fragments follow */
#define FRAG_LAST 3  /* offset > 0, the datagram's end */

static __always_inline void map_v4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* parse_l4 fills ports and flags of proto's header at off. */
static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct flow *f)
{
	__u8 hdr[14];

	switch (f->proto) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, off, hdr, 14) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(&f->sport, hdr, 2);
		__builtin_memcpy(&f->dport, hdr + 2, 2);
		f->tcp_flags = hdr[13];
		return PARSE_OK;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, hdr, 4) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(&f->sport, hdr, 2);
		__builtin_memcpy(&f->dport, hdr + 2, 2);
		return PARSE_OK;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off, hdr, 8) < 0)
			return PARSE_MALFORMED;
		if (f->proto == IPPROTO_ICMP) {
			if (hdr[0] == ICMP_ECHO || hdr[0] == ICMP_ECHOREPLY) {
				__builtin_memcpy(&f->sport, hdr + 4, 2);
				f->dport = f->sport;
			} else if (hdr[0] == ICMP_DEST_UNREACH || hdr[0] == ICMP_TIME_EXCEEDED ||
				   hdr[0] == ICMP_PARAMETERPROB) {
				f->icmp_error = 1;
			}
		} else {
			if (hdr[0] == ICMPV6_ECHO_REQUEST || hdr[0] == ICMPV6_ECHO_REPLY) {
				__builtin_memcpy(&f->sport, hdr + 4, 2);
				f->dport = f->sport;
			} else if (hdr[0] >= ICMPV6_DEST_UNREACH && hdr[0] <= ICMPV6_PARAMPROB) {
				f->icmp_error = 1;
			} else if ((hdr[0] >= ICMPV6_ND_FIRST && hdr[0] <= ICMPV6_ND_LAST) ||
				   (hdr[0] >= ICMPV6_MLD_QUERY && hdr[0] <= ICMPV6_MLD_DONE) ||
				   hdr[0] == ICMPV6_MLD2_REPORT) {
				f->nd = 1;
			}
		}
		return PARSE_OK;
	}
	/* Other protocols have no ports: only a rule without ports admits them. */
	return PARSE_OK;
}

/* frag_state places a packet whose fragment offset is off and whose
 * more-fragments flag is more. */
static __always_inline __u8 frag_state(__u32 off, __u32 more)
{
	if (off)
		return more ? FRAG_LATER : FRAG_LAST;
	return more ? FRAG_FIRST : FRAG_NONE;
}

#define IPV6_EXT_MAX 4 /* extension headers walked before giving up */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_DEST 60

/* skip_ipv6_ext walks IPv6 extension headers (hop-by-hop, routing,
 * destination options, fragment) so that f->proto and *l4 name the
 * transport header. MLD reports, for one, carry a hop-by-hop header. */
static __always_inline int skip_ipv6_ext(struct __sk_buff *skb, struct flow *f, __u32 *l4, int *ports_ok)
{
	__u8 ext[2];
	__u16 frag;
	__u32 id;

#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		switch (f->proto) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
			if (bpf_skb_load_bytes(skb, *l4, ext, 2) < 0)
				return PARSE_MALFORMED;
			f->proto = ext[0];
			*l4 += ((__u32)ext[1] + 1) * 8;
			break;
		case NEXTHDR_FRAGMENT:
			if (bpf_skb_load_bytes(skb, *l4, ext, 2) < 0 || bpf_skb_load_bytes(skb, *l4 + 2, &frag, 2) < 0 ||
			    bpf_skb_load_bytes(skb, *l4 + 4, &id, 4) < 0)
				return PARSE_MALFORMED;
			f->proto = ext[0];
			f->frag_id = bpf_ntohl(id);
			f->frag = frag_state(bpf_ntohs(frag) & 0xfff8, bpf_ntohs(frag) & 1);
			if (f->frag >= FRAG_LATER)
				*ports_ok = 0;
			*l4 += 8;
			break;
		default:
			return PARSE_OK;
		}
	}
	return PARSE_OK;
}

/* parse_ip reads an IP header at off. *l4 receives the offset of the
 * transport header; *ports_ok is 0 for a fragment other than the first. */
static __always_inline int parse_ip(struct __sk_buff *skb, __u32 off, __be16 proto, struct flow *f,
				    __u32 *l4, int *ports_ok)
{
	*ports_ok = 1;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return PARSE_MALFORMED;
		if (ip.ihl < 5)
			return PARSE_MALFORMED;
		map_v4(f->saddr, ip.saddr);
		map_v4(f->daddr, ip.daddr);
		f->proto = ip.protocol;
		f->ipv6 = 0;
		*l4 = off + ip.ihl * 4;
		f->frag = frag_state(bpf_ntohs(ip.frag_off) & 0x1fff, ip.frag_off & bpf_htons(0x2000));
		f->frag_id = bpf_ntohs(ip.id);
		if (f->frag >= FRAG_LATER)
			*ports_ok = 0;
		return PARSE_OK;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(f->saddr, &ip6.saddr, 16);
		__builtin_memcpy(f->daddr, &ip6.daddr, 16);
		f->proto = ip6.nexthdr;
		f->ipv6 = 1;
		*l4 = off + sizeof(ip6);
		return skip_ipv6_ext(skb, f, l4, ports_ok);
	}
	return PARSE_NOT_IP;
}

/* parse_packet fills f from an Ethernet frame. For an ICMP error it also
 * fills inner with the tuple of the packet the error quotes, as that packet
 * was sent (so its reverse is the flow the error belongs to). */
static __always_inline int parse_packet(struct __sk_buff *skb, struct flow *f, struct flow *inner)
{
	struct ethhdr eth;
	__u32 l4 = 0;
	int ports_ok, ret;

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return PARSE_NOT_IP;
	ret = parse_ip(skb, sizeof(eth), eth.h_proto, f, &l4, &ports_ok);
	if (ret != PARSE_OK)
		return ret;
	f->l4_off = l4;
	if (!ports_ok)
		return PARSE_OK;
	ret = parse_l4(skb, l4, f);
	if (ret != PARSE_OK || !f->icmp_error)
		return ret;

	/* The quoted header follows the 8-byte ICMP header. */
	ret = parse_ip(skb, l4 + 8, eth.h_proto, inner, &l4, &ports_ok);
	if (ret != PARSE_OK)
		return PARSE_MALFORMED;
	if (ports_ok && (inner->proto == IPPROTO_TCP || inner->proto == IPPROTO_UDP ||
			 inner->proto == IPPROTO_SCTP)) {
		__u8 ports[4];

		if (bpf_skb_load_bytes(skb, l4, ports, 4) < 0)
			return PARSE_MALFORMED;
		__builtin_memcpy(&inner->sport, ports, 2);
		__builtin_memcpy(&inner->dport, ports + 2, 2);
	}
	return PARSE_OK;
}
