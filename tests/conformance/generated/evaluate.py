#!/usr/bin/env python3
"""An independent, small evaluator of Kubernetes NetworkPolicy semantics,
written from the API reference (networking.k8s.io/v1 NetworkPolicySpec,
NetworkPolicyPeer, NetworkPolicyPort, IPBlock) and the concepts page, not
from any implementation. gen.py uses it to write expectations; run alone
(python3 evaluate.py) it first checks itself against every pair the
upstream catalog asserts (tests/conformance/upstream).

The rules, as the API text states them:
- A pod is isolated for ingress (egress) when some NetworkPolicy in its
  namespace selects it (spec.podSelector, {} = all) and lists Ingress
  (Egress) in policyTypes. policyTypes left out means Ingress, plus Egress
  when the policy has egress rules.
- A connection A->B on port P/proto is allowed when A's egress allows it
  (A not egress-isolated, or some egress rule of a policy selecting A admits
  B and P) and B's ingress allows it (likewise). Rules add up; replies of an
  allowed connection pass.
- A rule with no ports admits every port; a port entry admits its protocol
  (default TCP) and its port (all if unset; a number, up to endPort if set;
  a name, the destination pod's container port of that name and protocol).
- A rule with no peers admits everyone. A peer is an ipBlock (cidr minus
  except), or pods: podSelector alone means this policy's namespace,
  namespaceSelector alone every pod of the matching namespaces, both in one
  peer the pods matching both.
- Label selectors: matchLabels and matchExpressions (In, NotIn, Exists,
  DoesNotExist) all hold; an empty selector matches everything.
"""
import ipaddress
import json
import os
import sys


def selector_matches(sel, labels):
    if sel is None:
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def policy_types(spec):
    if spec.get("policyTypes"):
        return spec["policyTypes"]
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


class World:
    """pods: id -> {"ns", "labels", "ip", "ports": [{name, containerPort, protocol}]};
    namespaces: name -> labels; policies: list of NetworkPolicy dicts (filled)."""

    def __init__(self, pods, namespaces, policies):
        self.pods, self.namespaces, self.policies = pods, namespaces, policies

    def selecting(self, pid, direction):
        pod = self.pods[pid]
        return [p for p in self.policies
                if p["metadata"]["namespace"] == pod["ns"]
                and selector_matches(p["spec"].get("podSelector", {}), pod["labels"])
                and direction in policy_types(p["spec"])]

    def peer_admits(self, peer, policy_ns, other):
        o = self.pods[other]
        if "ipBlock" in peer:
            ip = ipaddress.ip_address(o["ip"])
            blk = peer["ipBlock"]
            net = ipaddress.ip_network(blk["cidr"], strict=False)
            if ip.version != net.version or ip not in net:
                return False
            for x in blk.get("except") or []:
                xn = ipaddress.ip_network(x, strict=False)
                if xn.version == ip.version and ip in xn:
                    return False
            return True
        ps, nss = peer.get("podSelector"), peer.get("namespaceSelector")
        if nss is not None:
            if not selector_matches(nss, self.namespaces[o["ns"]]):
                return False
        elif o["ns"] != policy_ns:
            return False
        return ps is None or selector_matches(ps, o["labels"])

    def port_admits(self, ports, dst, port, proto):
        if not ports:
            return True
        for p in ports:
            if p.get("protocol", "TCP") != proto:
                continue
            want = p.get("port")
            if want is None:
                return True
            if isinstance(want, int):
                if want == port or (p.get("endPort") is not None and want <= port <= p["endPort"]):
                    return True
                continue
            for cp in self.pods[dst]["ports"]:
                if cp["name"] == want and cp.get("protocol", "TCP") == proto and cp["containerPort"] == port:
                    return True
        return False

    def direction_allows(self, subject, other, dst, port, proto, direction):
        pols = self.selecting(subject, direction)
        if not pols:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for pol in pols:
            for rule in pol["spec"].get(key) or []:
                peers = rule.get(peers_key) or []
                if peers and not any(self.peer_admits(pe, pol["metadata"]["namespace"], other) for pe in peers):
                    continue
                if self.port_admits(rule.get("ports"), dst, port, proto):
                    return True
        return False

    def allowed(self, src, dst, port, proto):
        return (self.direction_allows(src, dst, dst, port, proto, "Egress")
                and self.direction_allows(dst, src, dst, port, proto, "Ingress"))


def fill(v, ips):
    """Fills {{hostCIDR ns/pod}} and {{slash4CIDR ns/pod}} templates."""
    if isinstance(v, dict):
        return {k: fill(x, ips) for k, x in v.items()}
    if isinstance(v, list):
        return [fill(x, ips) for x in v]
    if isinstance(v, str) and v.startswith("{{"):
        fn, pid = v.strip("{} ").split()
        ip = ipaddress.ip_address(ips[pid])
        if fn == "hostCIDR":
            return "%s/%d" % (ip, ip.max_prefixlen)
        if fn == "slash4CIDR":
            return str(ipaddress.ip_network("%s/4" % ip, strict=False))
        raise ValueError("template " + v)
    return v


def check_upstream(path):
    """Replays every upstream case and compares the evaluator with each
    asserted, non-loopback pair. Returns (pairs compared, mismatches)."""
    model = json.load(open(os.path.join(path, "model.json")))
    cases = json.load(open(os.path.join(path, "cases.json")))
    compared, wrong = 0, []
    for c in cases:
        pods, ips = {}, {}
        for i, p in enumerate(model["pods"]):
            ips[p["id"]] = "10.244.%d.%d" % (i % 3 + 1, 10 + i)
            pods[p["id"]] = {"ns": p["namespace"], "labels": dict(p["labels"]), "ip": ips[p["id"]], "ports": p["container_ports"]}
        nss = {n["name"]: dict(n["labels"]) for n in model["namespaces"]}
        pols = {}
        for s in c["setup"]:
            if "apply" in s:
                pol = fill(s["apply"], ips)
                pols[(pol["metadata"]["namespace"], pol["metadata"]["name"])] = pol
            elif "delete" in s:
                pols.pop((s["delete"]["namespace"], s["delete"]["name"]), None)
            elif "label_namespace" in s:
                nss[s["label_namespace"]["name"]].update(s["label_namespace"]["labels"])
            elif "label_pod" in s:
                lp = s["label_pod"]
                pods[lp["namespace"] + "/" + lp["name"]]["labels"].update(lp["labels"])
            elif "probe" in s:
                pr = s["probe"]
                w = World(pods, nss, list(pols.values()))
                asserted = pr.get("upstream_asserted_pods") or c["pods"]
                for a in asserted:
                    for b in asserted:
                        if a == b:
                            continue
                        compared += 1
                        got = w.allowed(a, b, pr["port"], pr["protocol"])
                        if got != pr["expected"][a][b]:
                            wrong.append("%s %s->%s %s/%d: evaluator %s, upstream %s" % (c["id"], a, b, pr["protocol"], pr["port"], got, pr["expected"][a][b]))
    return compared, wrong


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    n, wrong = check_upstream(os.path.join(here, "..", "upstream"))
    print("evaluator vs upstream: %d asserted pairs, %d differ" % (n, len(wrong)))
    for w in wrong:
        print("  " + w)
    sys.exit(1 if wrong else 0)
