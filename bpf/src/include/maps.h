/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Palisade's maps. Every map is pinned by name under <bpf-root>/maps by the
 * agent, which is their only writer except conntrack (conntrack.h) and
 * pal_frag (frag.h), written by the programs.
 * Addresses are 16 bytes everywhere; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d), so one set of maps serves both families. */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#define MAX_ENDPOINTS 4096
/* Rules of all endpoints together; entries cost memory only when used. */
#define MAX_POLICY_ENTRIES (1 << 20)
#define MAX_IPCACHE 524288

/* Reserved identities. Identities of pods, namespaces and ipBlock prefixes
 * are allocated by the agent from ID_FIRST_DYNAMIC on. */
#define ID_ANY 0         /* wildcard peer in a policy key: from: [] or no from */
#define ID_HOST 1        /* the pod's own node (allowed by agent entries) */
#define ID_WORLD 2       /* an address the ipcache does not know */
#define ID_REMOTE_NODE 3 /* another node of the cluster */

/* Directions from the pod's point of view. */
#define DIR_EGRESS 0  /* pal_from_pod: what the pod sends */
#define DIR_INGRESS 1 /* pal_to_pod: what the pod receives */
#define DIR_SERVICE 2 /* conntrack only: a flow to a Service, before translation */

/* pal_ep: host-side ifindex -> endpoint.
 * Written by the agent after the endpoint's rule set; read by both
 * programs for every packet. A packet on an interface with no entry is
 * dropped: an endpoint is never unprotected while it is being set up.
 * The entry holds the endpoint's addresses: pal_from_pod drops what the pod
 * sends from any other (source.h). Each change of layout takes a new name
 * (pal_endpoints had no rule set, pal_ep_info no addresses), so that an
 * upgraded agent loads beside programs still using the old layout. */
#define EP_F_INGRESS_ISOLATED (1 << 0)
#define EP_F_EGRESS_ISOLATED (1 << 1)

/* Addresses an endpoint may send from. Kubernetes gives a pod at most one
 * per family; the agent refuses an endpoint with more than this. */
#define EP_MAX_ADDRS 4

struct endpoint_info {
	__u64 revision; /* agent revision of the policy in the maps */
	__u32 identity;
	__u32 flags;    /* EP_F_* */
	__u32 rule_set; /* the rules of pal_set_rules the endpoint follows */
	__u32 naddrs;   /* addresses used in addrs */
	__u8 addrs[EP_MAX_ADDRS][16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ep SEC(".maps");

/* pal_ipcache: address prefix -> identity.
 * Written by the agent (pod IPs, node IPs, ipBlock prefixes); read by both
 * programs for the first packet of a flow. A miss means ID_WORLD. */
struct ipcache_key {
	__u32 prefixlen; /* bits of addr that count; IPv4 is 96 + len */
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_IPCACHE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_ipcache SEC(".maps");

/* pal_set_rules: allow rules, one LPM trie keyed by (rule set, direction,
 * peer identity, protocol, port prefix). A rule set is the rules of every
 * endpoint whose pod policies treat alike (same namespace, labels, named
 * ports), so a pod that starts like others writes no rule, and N such pods
 * cost one set of entries, not N. Prefix lengths count from the set, which
 * and dir are always matched whole:
 *   prefixlen 96: the peer, any protocol, any port
 *   prefixlen 104: the peer, one protocol, any port
 *   prefixlen 112+n: the peer, one protocol, ports sharing the first n bits
 * The agent changes an endpoint's rules in place, make-before-break: new
 * entries go in before stale ones go out, and every entry allows, so a
 * packet judged during a change gets the old verdict or the new one. One
 * flat map rather than a map per endpoint because replacing an element of
 * a map-in-map waits for an RCU grace period (~12 ms here) on every write.
 * Read by both programs for the first packet of a flow. */
struct policy_key {
	__u32 prefixlen;
	__u32 rule_set; /* host byte order: only ever matched whole */
	__u32 dir;     /* DIR_* */
	__u32 identity;
	__u8 proto;
	__u8 pad;
	__be16 port_net; /* destination port, network byte order */
};

/* An entry allows, unless POLICY_F_DENY: then it drops. Deny entries come
 * from cluster policies (admin tiers), folded by the agent with NetworkPolicy
 * into one answer per peer, protocol and port range. */
#define POLICY_F_DENY (1 << 0)

struct policy_value {
	__u32 rule; /* agent's rule reference, reported in events */
	__u32 flags; /* POLICY_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_POLICY_ENTRIES);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_set_rules SEC(".maps");

/* Drop reasons, counted in pal_drops and carried in events. */
#define REASON_ALLOWED 0
#define REASON_UNKNOWN_ENDPOINT 1 /* interface has no endpoint entry */
#define REASON_POLICY 2           /* no policy allows the flow */
#define REASON_REJUDGED 3         /* policy changed; flow no longer allowed */
#define REASON_MALFORMED 4        /* truncated header */
#define REASON_NAT 5              /* Service translation failed */
#define REASON_SPOOFED 6          /* the pod sent what is not its own to send (source.h) */
#define REASON_FRAGMENT 7         /* a later fragment whose first was not admitted */
#define REASON_MAX 8

/* pal_drops: per-CPU packet counters by reason; read by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_drops SEC(".maps");

/* pal_events: verdict events for the agent (drops, and sampled allowed
 * flows; see events.h). When the agent lags and the buffer is full, the event
 * is lost and counted, never the packet. */
struct verdict_event {
	__u64 timestamp;
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 reason;
	__u8 pad;
	__u32 ifindex;
	__u32 peer_identity;
	__u32 rule; /* policy rule that allowed the flow; 0 for a drop */
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pal_events SEC(".maps");
