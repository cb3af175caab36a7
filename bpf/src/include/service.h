/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service translation before judging. A pod that sends to a Service's
 * ClusterIP:port (or externalIP, load-balancer IP or a node address on its
 * NodePort) has its packet rewritten, on its own veth, to a backend pod's
 * address and port, so that its egress policy is judged against the
 * backend, as the API defines policy on pod addresses and target ports.
 * kube-proxy then sees a pod address and leaves the packet alone. Replies
 * get their source rewritten back to the Service address. */
#pragma once

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "parse.h"
#include "verdict.h"

#define MAX_SERVICES 65536
#define MAX_BACKENDS 262144
#define MAX_NODE_ADDRS 16384

/* pal_services: (ClusterIP, port, protocol) -> service. A NodePort is
 * keyed by the unspecified address of its family (::ffff:0.0.0.0 or ::):
 * it answers on every node address. Written by the agent from Services and
 * EndpointSlices; read by pal_from_pod for the first packet of a flow to a
 * Service. */
struct service_key {
	__u8 addr[16];
	__be16 port_net;
	__u8 proto;
	__u8 pad;
};

struct service_value {
	__u32 id;           /* key of the backends in pal_backends */
	__u32 count;        /* backends in slots 1..count */
	__u32 affinity_sec; /* ClientIP session affinity timeout; 0: none */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_services SEC(".maps");

/* pal_node_addrs: every address of every node, this one's included, as
 * the NodePort entries apply to. Left to kube-proxy, a flow to a node
 * address on a NodePort is forwarded masqueraded as a node, which policy
 * always admits. Written by the agent from Node objects and its own
 * interfaces; read by pal_from_pod when no Service entry matches. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NODE_ADDRS);
	__type(key, __u8[16]);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_node_addrs SEC(".maps");

/* pal_backends: (service id, slot) -> backend. Written by the agent before
 * the service entry that counts it; read by pal_from_pod. */
struct backend_key {
	__u32 service_id;
	__u32 slot;
};

struct backend_value {
	__u8 addr[16];
	__be16 port_net;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_backends SEC(".maps");

/* pal_affinity: (service id, client) -> the backend slot it was given, for
 * ClientIP session affinity. Written and read by pal_from_pod. */
struct affinity_key {
	__u32 service_id;
	__u8 client[16];
};

struct affinity_value {
	__u64 expires;
	__u32 slot;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_affinity SEC(".maps");

enum lb_result {
	LB_NONE,       /* not a Service address: judge as is */
	LB_TRANSLATED, /* rewritten to a backend: judge the backend */
	LB_SELF,       /* the pod's own Service leads only to itself */
	LB_ERROR,      /* the packet could not be rewritten */
};

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* l4_csum_off is the offset of the transport checksum, or 0 when the
 * protocol's checksum does not cover addresses and ports the way TCP's and
 * UDP's do. */
static __always_inline __u32 l4_csum_off(const struct flow *f)
{
	/* A fragment after the first has no transport header: the
	 * checksum, which covers the whole datagram, is fixed in the first. */
	if (f->frag >= FRAG_LATER)
		return 0;
	if (f->proto == IPPROTO_TCP)
		return f->l4_off + 16;
	if (f->proto == IPPROTO_UDP)
		return f->l4_off + 6;
	return 0;
}

/* nat_rewrite replaces the source (dst == 0) or destination address and
 * port of f's packet, fixing the IP and transport checksums, and updates f.
 * A fragment after the first gets its address rewritten only: its port
 * lives in the first fragment. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct flow *f, int dst, const __u8 *addr,
				       __be16 port)
{
	__u8 *cur = dst ? f->daddr : f->saddr;
	__be16 *cur_port = dst ? &f->dport : &f->sport;
	__u32 csum = l4_csum_off(f);
	__u64 flags = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 port_off = f->l4_off + (dst ? 2 : 0);

	if (f->ipv6) {
		__u32 addr_off = 14 + (dst ? 24 : 8);
		__s64 diff = bpf_csum_diff((__be32 *)cur, 16, (__be32 *)addr, 16, 0);

		if (csum && bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR | flags) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, addr, 16, 0) < 0)
			return -1;
	} else {
		__u32 addr_off = 14 + (dst ? 16 : 12);
		__be32 old, new;

		__builtin_memcpy(&old, cur + 12, 4);
		__builtin_memcpy(&new, addr + 12, 4);
		if (bpf_l3_csum_replace(skb, 14 + 10, old, new, 4) < 0)
			return -1;
		if (csum && bpf_l4_csum_replace(skb, csum, old, new, BPF_F_PSEUDO_HDR | flags | 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new, 4, 0) < 0)
			return -1;
	}
	if (port != *cur_port && f->frag < FRAG_LATER) {
		if (csum && bpf_l4_csum_replace(skb, csum, *cur_port, port, flags | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &port, 2, 0) < 0)
			return -1;
	}
	__builtin_memcpy(cur, addr, 16);
	*cur_port = port;
	return 0;
}

/* lb_pick chooses a backend slot for a new flow of client to svc: the
 * affinity slot when the service has ClientIP affinity, else a random one.
 * The client's own address is avoided while other backends exist: reaching
 * itself would need the source rewritten too, which is kube-proxy's job. */
static __always_inline struct backend_value *lb_pick(const struct service_value *svc, const __u8 *client,
						     __u64 now, __u32 *slot)
{
	struct affinity_key ak = {.service_id = svc->id};
	struct affinity_value *av, nav = {};
	struct backend_key bk = {.service_id = svc->id};
	struct backend_value *be;

	__builtin_memcpy(ak.client, client, 16);
	bk.slot = bpf_get_prandom_u32() % svc->count + 1;
	if (svc->affinity_sec) {
		av = bpf_map_lookup_elem(&pal_affinity, &ak);
		if (av && av->expires > now && av->slot <= svc->count)
			bk.slot = av->slot;
	}
	be = bpf_map_lookup_elem(&pal_backends, &bk);
	if (be && addr_eq(be->addr, client) && svc->count > 1) {
		bk.slot = bk.slot % svc->count + 1;
		be = bpf_map_lookup_elem(&pal_backends, &bk);
	}
	if (be && svc->affinity_sec) {
		nav.expires = now + (__u64)svc->affinity_sec * NSEC;
		nav.slot = bk.slot;
		bpf_map_update_elem(&pal_affinity, &ak, &nav, BPF_ANY);
	}
	*slot = bk.slot;
	return be;
}

/* lb_translate rewrites a packet sent to a Service to the flow's backend:
 * the one svc records when the flow is known (its CT_F_SERVICE entry),
 * else one chosen now. On LB_TRANSLATED, vip and vport hold the Service
 * address the flow's replies must come from, and f the backend. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct flow *f, __u32 ifindex, __u64 now,
					const struct ct_entry *svc_ct, __u8 *vip, __be16 *vport)
{
	struct service_key sk = {.port_net = f->dport, .proto = f->proto};
	struct service_value *svc;
	struct ct_entry *e, ne = {};
	struct ct_key key;
	struct backend_value *be;
	__u32 slot;
	int nodeport = 0;

	if (svc_ct) {
		ne.nat_port = svc_ct->nat_port;
		__builtin_memcpy(ne.nat_addr, svc_ct->nat_addr, 16);
		goto rewrite;
	}
	if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP && f->proto != IPPROTO_SCTP)
		return LB_NONE;
	__builtin_memcpy(sk.addr, f->daddr, 16);
	svc = bpf_map_lookup_elem(&pal_services, &sk);
	if (!svc && bpf_map_lookup_elem(&pal_node_addrs, sk.addr)) {
		/* A node address: the port's NodePort entry, if any. */
		nodeport = 1;
		__builtin_memset(sk.addr + 12, 0, 4);
		if (f->ipv6)
			__builtin_memset(sk.addr, 0, 12);
		svc = bpf_map_lookup_elem(&pal_services, &sk);
	}
	if (!svc || svc->count == 0)
		return LB_NONE;

	/* A flow an older version translated keeps its backend: it recorded
	 * the choice under DIR_SERVICE, with the tuple as sent (never
	 * ct_key_canon's key). */
	ct_key_forward(&key, f, DIR_SERVICE);
	e = ct_lookup(&key);
	if (e && e->ifindex == ifindex && e->expires > now) {
		ne.nat_port = e->nat_port;
		__builtin_memcpy(ne.nat_addr, e->nat_addr, 16);
	} else {
		be = lb_pick(svc, f->saddr, now, &slot);
		if (!be)
			return LB_NONE;
		ne.nat_port = be->port_net;
		__builtin_memcpy(ne.nat_addr, be->addr, 16);
	}
	if (addr_eq(ne.nat_addr, f->saddr))
		return LB_SELF;
	/* SCTP's checksum covers its ports: only a port-preserving
	 * translation can be done without recomputing it. A NodePort flow
	 * left to kube-proxy would reach the backend masqueraded as a node,
	 * past its policy: it is dropped instead. */
	if (f->proto == IPPROTO_SCTP && ne.nat_port != f->dport)
		return nodeport ? LB_ERROR : LB_NONE;
rewrite:
	__builtin_memcpy(vip, f->daddr, 16);
	*vport = f->dport;
	if (nat_rewrite(skb, f, 1, ne.nat_addr, ne.nat_port) < 0)
		return LB_ERROR;
	return LB_TRANSLATED;
}

/* lb_record keeps the translation of the flow f (translated from vip and
 * vport) in its CT_F_SERVICE entry, at the endpoint's revision: its next
 * packets are translated from there. */
static __always_inline void lb_record(const struct flow *f, __u32 ifindex, __u64 now, __u64 revision,
				      const __u8 *vip, __be16 vport)
{
	struct ct_entry ne = {};
	struct ct_key key;
	int rev;

	ct_key_forward(&key, f, DIR_EGRESS);
	__builtin_memcpy(key.daddr, vip, 16);
	key.dport = vport;
	rev = ct_key_canon(&key);
	ne.expires = now + ct_lifetime(f);
	ne.revision = revision;
	ne.ifindex = ifindex;
	ne.flags = CT_F_SERVICE | ct_entry_flags(rev);
	ne.nat_port = f->dport;
	__builtin_memcpy(ne.nat_addr, f->daddr, 16);
	ct_store(&key, &ne);
}

/* lb_admitted notes that a flow translated to a Service backend (lb) was
 * admitted at revision: in its CT_F_SERVICE entry svc when it has one,
 * else in a new one. */
static __always_inline void lb_admitted(struct ct_entry *svc, int lb, const struct flow *f, __u32 ifindex,
					__u64 now, __u64 revision, const __u8 *vip, __be16 vport)
{
	if (svc)
		svc->revision = revision;
	else if (lb == LB_TRANSLATED)
		lb_record(f, ifindex, now, revision, vip, vport);
}
