/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Fragments follow their first fragment. Only a datagram's first fragment
 * carries the transport header, so only it can be judged, translated to a
 * Service backend and matched to a conntrack entry. When it is admitted,
 * the ports it had are remembered under the datagram's identity; the later
 * fragments take them from there and then go the way of any packet of
 * the flow: the same conntrack entry, the same Service translation (of the
 * IP header only). A later fragment whose first was not admitted, or not
 * seen, finds nothing and is dropped. Reassembly in the receiver takes the
 * transport header from the first fragment alone (Linux discards
 * overlapping fragments), so a later fragment cannot change the ports the
 * first was judged on. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "verdict.h"

/* Linux's reassembly timeout (net.ipv4.ipfrag_time, net.ipv6 likewise):
 * a later fragment arriving after it could not be reassembled anyway. */
#define FRAG_LIFETIME (30 * NSEC)
/* Datagrams in flight at once on a node. Each entry goes when its last
 * fragment passes, so the map holds only datagrams being sent. */
#define MAX_FRAGS 8192

/* pal_frag: a datagram, as its fragments show it on one endpoint's hook,
 * before any translation -> the ports of its first fragment. Written and
 * read by both programs only. */
struct frag_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 id; /* IPv4 identification or IPv6 fragment identification */
	__u32 ifindex;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

struct frag_value {
	__u64 expires;
	__be16 sport;
	__be16 dport;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FRAGS);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_frag SEC(".maps");

/* frag_state: the datagram a packet belongs to, kept from parsing to the
 * verdict because translation changes f. */
struct frag_state {
	struct frag_key key;
	struct frag_value val;
};

/* frag_begin prepares s for f, which crossed endpoint ifindex in dir, and
 * gives a later fragment the ports of its first. It returns -1 for a later
 * fragment whose first was not admitted: drop it. A first fragment clears
 * what an older datagram with the same identity left: it is admitted again
 * (frag_admit) or its fragments are dropped. */
static __always_inline int frag_begin(struct frag_state *s, struct flow *f, __u8 dir, __u32 ifindex,
				      __u64 now)
{
	struct frag_value *v;

	if (f->frag == FRAG_NONE)
		return 0;
	__builtin_memcpy(s->key.saddr, f->saddr, 16);
	__builtin_memcpy(s->key.daddr, f->daddr, 16);
	s->key.id = f->frag_id;
	s->key.ifindex = ifindex;
	s->key.proto = f->proto;
	s->key.dir = dir;
	s->key.pad = 0;
	if (f->frag == FRAG_FIRST) {
		s->val.expires = now + FRAG_LIFETIME;
		s->val.sport = f->sport;
		s->val.dport = f->dport;
		s->val.pad = 0;
		bpf_map_delete_elem(&pal_frag, &s->key);
		return 0;
	}
	v = bpf_map_lookup_elem(&pal_frag, &s->key);
	if (!v || v->expires <= now)
		return -1;
	f->sport = v->sport;
	f->dport = v->dport;
	if (f->frag == FRAG_LAST)
		bpf_map_delete_elem(&pal_frag, &s->key);
	return 0;
}

/* frag_admit records that the first fragment s describes was admitted. */
static __always_inline void frag_admit(const struct frag_state *s, const struct flow *f)
{
	if (f->frag == FRAG_FIRST)
		bpf_map_update_elem(&pal_frag, &s->key, &s->val, BPF_ANY);
}
