#!/usr/bin/env python3
"""Transcribes the ClusterNetworkPolicy conformance suite of
sigs.k8s.io/network-policy-api (the version in go.mod) into the runner's
catalog format: model.json and cases.json next to this file.

Run: python3 gen.py [MODULE_DIR]   (needs PyYAML; the output is committed, so
neither the tests nor make test run this). MODULE_DIR defaults to the module
in the Go module cache (`go mod download -json sigs.k8s.io/network-policy-api`).

How the suite is read:
  * conformance/base/manifests.yaml gives the namespaces and the pods of the
    model (StatefulSets of 2 replicas: <set>-0, <set>-1).
  * Each conformance/tests/*.go ConformanceTest applies its Manifests, then
    runs its t.Run subtests in order, on shared state: a subtest's policy
    patches and label changes stay for the subtests after it (t.Cleanup
    blocks excepted, which run at the subtest's end).
  * The Go statements of the test bodies are a small, regular language
    (GetPod, PokeServer, GetClusterNetworkPolicy, rule swaps, PatchNamespace,
    SetPodLabel, ...). This script interprets exactly those statements and
    stops with an error on any other, so that nothing is dropped silently.

Every subtest becomes one case. Its steps first rebuild the state the
subtest starts from (the manifests' policies with the earlier subtests'
patches applied, and their labels), then replay the subtest: each patch an
`apply` in update mode, each label change a label step, and the PokeServer
calls between two changes grouped into `probe` steps by port and protocol,
with `"pairs": "listed"`: only the (client, server) pairs upstream pokes are
probed and judged, every other pair is not asserted (README.md here, and
tests/conformance/upstream/README.md, say how the runner shows that).
"""
import copy
import json
import os
import re
import subprocess
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "sigs.k8s.io/network-policy-api"

# Tags of the suite's features (conformance/utils/suite/features.go). The
# standard channel is SupportClusterNetworkPolicy alone.
FEATURE_TAGS = {
    "suite.SupportClusterNetworkPolicy": "Feature:ClusterNetworkPolicy",
    "suite.SupportClusterNetworkPolicyNamedPorts": "Feature:ClusterNetworkPolicyNamedPorts",
    "suite.SupportClusterNetworkPolicyEgressNodePeers": "Feature:ClusterNetworkPolicyEgressNodePeers",
}
STANDARD = {"suite.SupportClusterNetworkPolicy"}
# Node peers are probed at hostNetwork pods (centaur-0/1 in
# forbidden-forrest): the cases say so with this tag.
EXTRA_TAGS = {"suite.SupportClusterNetworkPolicyEgressNodePeers": ["Needs:HostNetworkPods"]}
# The host-network ports (utils/suite/suite.go fills HostNetworkPorts from a
# free range at run time); these are free in the testbed's node namespaces.
HOST_NETWORK_PORTS = [34345, 34346, 34347, 34348, 34349, 34350, 34351, 34352]

# The agnhost containers serve these ports (manifests.yaml); upstream
# declares only 80/TCP "web" and 53/UDP "dns". The testbed answers on
# declared ports only, so the others are declared too, without a name: a
# named port can only resolve to a named containerPort, so this changes
# nothing a policy can select.
SERVED = [(80, "TCP", "web"), (8080, "TCP", None), (53, "UDP", "dns"), (5353, "UDP", None),
          (9003, "SCTP", None), (9005, "SCTP", None)]


def module_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    with open(os.path.join(HERE, "..", "..", "..", "go.mod")) as f:
        version = re.search(re.escape(MODULE) + r" (v\S+)", f.read()).group(1)
    out = subprocess.run(["go", "mod", "download", "-json", MODULE + "@" + version],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["Dir"]


def version_of(d):
    return os.path.basename(d.rstrip("/")).split("@", 1)[1]


def load_yaml(path):
    with open(path) as f:
        text = f.read()
    # The manifests are Go templates only for the host-network ports.
    text = re.sub(r"\{\{\s*index \.HostNetworkPorts (\d+)\s*\}\}",
                  lambda m: str(HOST_NETWORK_PORTS[int(m.group(1))]), text)
    return [d for d in yaml.safe_load_all(text) if d]


def port_of(port, proto, name):
    p = {"containerPort": port, "protocol": proto}
    if name:
        p["name"] = name
    return p


def served_by(pod_spec):
    """The ports a hostNetwork pod's agnhost containers serve: those they
    declare, and the SCTP ones agnhost porter serves from its
    SERVE_SCTP_PORT_<n> variables, which upstream does not declare."""
    ports = []
    for c in pod_spec["containers"]:
        for p in c.get("ports", []):
            ports.append(port_of(p["containerPort"], p.get("protocol", "TCP"), p.get("name")))
        for env in c.get("env", []):
            m = re.fullmatch(r"SERVE_SCTP_PORT_(\d+)", env["name"])
            if m:
                ports.append(port_of(int(m.group(1)), "SCTP", None))
    return ports


def build_model(d):
    docs = load_yaml(os.path.join(d, "conformance", "base", "manifests.yaml"))
    namespaces, pods, host_sets = [], [], []
    for doc in docs:
        if doc["kind"] == "Namespace":
            name = doc["metadata"]["name"]
            labels = dict(doc["metadata"].get("labels", {}))
            labels["kubernetes.io/metadata.name"] = name
            namespaces.append({"name": name, "labels": labels})
        elif doc["kind"] == "StatefulSet":
            ns, set_name = doc["metadata"]["namespace"], doc["metadata"]["name"]
            spec = doc["spec"]
            host = bool(spec["template"]["spec"].get("hostNetwork"))
            if host:
                host_sets.append(ns + "/" + set_name)
            for i in range(spec["replicas"]):
                name = "%s-%d" % (set_name, i)
                labels = dict(spec["template"]["metadata"]["labels"])
                # What the StatefulSet controller adds (controller-revision-hash
                # is left out: its value is a hash no policy of the suite names).
                labels["statefulset.kubernetes.io/pod-name"] = name
                labels["apps.kubernetes.io/pod-index"] = str(i)
                pod = {"namespace": ns, "name": name, "id": ns + "/" + name, "labels": labels}
                if host:
                    pod["container_ports"] = served_by(spec["template"]["spec"])
                    pod["host_network"] = True
                else:
                    pod["container_ports"] = [port_of(*s) for s in SERVED]
                pods.append(pod)
    return {
        "source": {
            "module": "%s@%s" % (MODULE, version_of(d)),
            "files": ["conformance/base/manifests.yaml"],
            "generated_by": "tests/conformance/network-policy-api/gen.py",
        },
        "namespaces": namespaces,
        "pod_order": [p["id"] for p in pods],
        "pods": pods,
        "services": [],
        # The experimental channel's CRD, so that the experimental cases'
        # fields (destinationNamedPort, nodes) are kept, not pruned; it is
        # the standard one plus those fields.
        "cluster_policy_crd": "experimental-crd.yaml",
        "notes": [
            "Pods are the StatefulSets' replicas with the labels the StatefulSet controller gives them "
            "(statefulset.kubernetes.io/pod-name, apps.kubernetes.io/pod-index; controller-revision-hash left out).",
            "Every port an agnhost container serves is declared; upstream declares only 80/TCP 'web' and 53/UDP 'dns', "
            "and the extra ones carry no name, so named ports resolve as upstream.",
            "The hostNetwork StatefulSet(s) %s are hostNetwork pods, one per node; they declare the TCP and UDP "
            "ports upstream declares, and their SCTP ports (agnhost porter's SERVE_SCTP_PORT_<n>) without a name. "
            "Only the experimental node-peer tests probe them." % ", ".join(host_sets),
            "The suite probes pod IPs only (PokeServer to Status.PodIP): no Services.",
        ],
    }


# --- the Go test bodies ------------------------------------------------------

def strip_comments(src):
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", l) for l in src.split("\n"))


def statements(body):
    """Splits a Go block body into statements: a line, joined with the next
    ones while brackets are open; t.Run and t.Cleanup bodies are kept as
    nested ("run", name, stmts) and ("cleanup", stmts)."""
    lines = [l.strip() for l in body.split("\n")]
    out, i = [], 0
    while i < len(lines):
        l = lines[i]
        i += 1
        if not l:
            continue
        m = re.match(r't\.Run\("(.*)", func\(t \*testing\.T\) \{$', l)
        c = re.match(r"t\.Cleanup\(func\(\) \{$", l)
        if m or c:
            depth, inner = 1, []
            while depth:
                s = lines[i]
                i += 1
                depth += s.count("{") - s.count("}")
                if depth:
                    inner.append(s)
            sub = statements("\n".join(inner))
            out.append(("run", m.group(1), sub) if m else ("cleanup", sub))
            continue
        depth = l.count("(") + l.count("{") + l.count("[") - l.count(")") - l.count("}") - l.count("]")
        while depth > 0:
            s = lines[i]
            i += 1
            l += " " + s
            depth += s.count("(") + s.count("{") + s.count("[") - s.count(")") - s.count("}") - s.count("]")
        out.append(("stmt", re.sub(r"\s+", " ", l)))
    return out


def conformance_tests(path, consts):
    src = strip_comments(open(path).read())
    for m in re.finditer(r"var (\w+) = suite\.ConformanceTest\{", src):
        start = m.end()
        depth, j = 1, start
        while depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        block = src[start:j - 1]
        short = re.search(r'ShortName:\s*"([^"]+)"', block).group(1)
        feats = re.findall(r"suite\.Support\w+", re.search(r"Features: \[\]suite\.SupportedFeature\{(.*?)\}", block, re.S).group(1))
        manifests = re.findall(r'"(base/[^"]+)"', re.search(r"Manifests:.*?\}", block, re.S).group(0))
        tb = re.search(r"Test: func\(t \*testing\.T, s \*suite\.ConformanceTestSuite\) \{", block)
        yield {"short": short, "features": feats, "manifests": manifests,
               "body": statements(block[tb.end():].rsplit("}", 1)[0]), "consts": consts}


def key_of(obj):
    md = obj["metadata"]
    return (obj["kind"], md.get("namespace", ""), md["name"])


class Transcriber:
    """Interprets one ConformanceTest on a model of the cluster state."""

    def __init__(self, model, test, d, rel):
        self.model, self.test, self.rel = model, test, rel
        self.objs = {}
        for m in test["manifests"]:
            for o in load_yaml(os.path.join(d, "conformance", m)):
                self.objs[key_of(o)] = o
        self.ns_labels = {n["name"]: dict(n["labels"]) for n in model["namespaces"]}
        self.pod_labels = {p["id"]: dict(p["labels"]) for p in model["pods"]}
        self.vars = {}
        self.consts = test["consts"]
        self.cases = []

    def pod_var(self, v):
        if v not in self.vars or not isinstance(self.vars[v], tuple):
            raise ValueError("%s: %s is not a pod" % (self.test["short"], v))
        return self.vars[v][1]

    # The steps that rebuild the state a subtest starts from.
    def prelude(self):
        steps = [{"apply": copy.deepcopy(o)} for o in self.objs.values()]
        for ns, labels in self.ns_labels.items():
            orig = next(n["labels"] for n in self.model["namespaces"] if n["name"] == ns)
            if labels != orig:
                steps.append({"label_namespace": {"name": ns, "labels": labels, "replace": True}})
        for pid, labels in self.pod_labels.items():
            orig = next(p["labels"] for p in self.model["pods"] if p["id"] == pid)
            if labels != orig:
                ns, name = pid.split("/")
                steps.append({"label_pod": {"namespace": ns, "name": name, "labels": labels, "replace": True}})
        return steps

    def run(self):
        for st in self.test["body"]:
            if st[0] == "run":
                self.subtest(st[1], st[2])
            elif st[0] == "stmt":
                self.exec(st[1], None)
            else:
                raise ValueError("cleanup outside a subtest")
        return self.cases

    def subtest(self, name, body):
        steps = self.prelude()
        self.pokes = []  # pending PokeServer calls of the current state
        cleanups = []
        for st in body:
            if st[0] == "cleanup":
                cleanups.extend(st[1])
            elif st[0] == "stmt":
                self.exec(st[1], steps)
            else:
                raise ValueError("nested t.Run")
        self.flush(steps)
        for st in cleanups:
            self.exec(st[1], None)
        feats = self.test["features"]
        tags = [FEATURE_TAGS[f] for f in feats]
        for f in feats:
            tags += EXTRA_TAGS.get(f, [])
        tags.append("Channel:Standard" if set(feats) <= STANDARD else "Channel:Experimental")
        n = len(self.cases) + 1
        self.cases.append({
            "id": "%s/%d" % (self.test["short"], n),
            "name": name,
            "group": [self.test["short"]],
            "tags": tags,
            "source": {"file": "conformance/tests/" + self.rel, "manifests": ["conformance/" + m for m in self.test["manifests"]],
                       "subtest": n},
            "setup": steps,
        })

    def flush(self, steps):
        """Turns the pending pokes into probe steps, one per port and
        protocol, in the order first poked."""
        groups = {}
        for frm, to, proto, port, want in self.pokes:
            g = groups.setdefault((port, proto), {})
            row = g.setdefault(frm, {})
            if row.get(to, want) != want:
                raise ValueError("%s: %s->%s %s/%d poked both ways in one state" % (self.test["short"], frm, to, proto, port))
            row[to] = want
        for (port, proto), exp in groups.items():
            steps.append({"probe": {"port": port, "protocol": proto, "target": "pod", "pairs": "listed",
                                    "ignore_loopback": True, "expected": exp}})
        self.pokes = []

    def change(self, steps, step):
        """A state change: the pokes before it are one probe group."""
        if steps is None:
            return
        self.flush(steps)
        steps.append(step)

    def exec(self, s, steps):
        m = re.fullmatch(r'(\w+) :?= kubernetes\.GetPod\(t, s\.Client, "([^"]+)", "([^"]+)", s\.TimeoutConfig\.GetTimeout\)', s)
        if m:
            self.vars[m.group(1)] = ("pod", m.group(2) + "/" + m.group(3))
            return
        m = re.fullmatch(r'kubernetes\.PokeServer\(t, s\.ClientSet, &s\.KubeConfig, "([^"]+)", "([^"]+)", "(tcp|udp|sctp)", '
                         r'(\w+)\.Status\.PodIP, int32\((\d+|s\.HostNetworkPorts\[(\d)\])\), s\.TimeoutConfig, (true|false)\)', s)
        if m:
            port = int(m.group(5)) if m.group(6) is None else HOST_NETWORK_PORTS[int(m.group(6))]
            to = self.vars[m.group(4)][1]
            self.pokes.append((m.group(1) + "/" + m.group(2), to, m.group(3).upper(), port, m.group(7) == "true"))
            return
        m = re.fullmatch(r'cnp :?= kubernetes\.GetClusterNetworkPolicy\(t, s\.Client, "([^"]+)", s\.TimeoutConfig\.GetTimeout\)', s)
        if m:
            self.vars["cnp"] = ("cnp", ("ClusterNetworkPolicy", "", m.group(1)))
            return
        if s == "mutate := cnp.DeepCopy()":
            self.vars["mutate"] = copy.deepcopy(self.objs[self.vars["cnp"][1]])
            return
        m = re.fullmatch(r"(\w+) := mutate(?:\.DeepCopy\(\))?\.Spec\.(Ingress|Egress)\[(\d+)\]", s)
        if m:
            self.vars[m.group(1)] = copy.deepcopy(self.vars["mutate"]["spec"][m.group(2).lower()][int(m.group(3))])
            return
        m = re.fullmatch(r"mutate\.Spec\.(Ingress|Egress)\[(\d+)\] = mutate\.Spec\.(Ingress|Egress)\[(\d+)\]", s)
        if m and m.group(1) == m.group(3):
            rules = self.vars["mutate"]["spec"][m.group(1).lower()]
            rules[int(m.group(2))] = copy.deepcopy(rules[int(m.group(4))])
            return
        m = re.fullmatch(r"mutate\.Spec\.(Ingress|Egress)\[(\d+)\] = (\w+)", s)
        if m:
            self.vars["mutate"]["spec"][m.group(1).lower()][int(m.group(2))] = copy.deepcopy(self.vars[m.group(3)])
            return
        m = re.fullmatch(r"mutate\.Spec\.(Ingress|Egress)\[(\d+)\]\.Action = api\.ClusterNetworkPolicyRuleAction(Accept|Deny|Pass)", s)
        if m:
            self.vars["mutate"]["spec"][m.group(1).lower()][int(m.group(2))]["action"] = m.group(3)
            return
        m = re.fullmatch(r"mutate\.Spec\.Priority = (\d+)", s)
        if m:
            self.vars["mutate"]["spec"]["priority"] = int(m.group(1))
            return
        m = re.fullmatch(r'(\w+) := "([^"]*)"', s)
        if m:
            self.vars[m.group(1)] = m.group(2)
            return
        m = re.fullmatch(r"(\w+)\.Protocols = \[\]api\.ClusterNetworkPolicyProtocol\{ \{ DestinationNamedPort: (\w+), \}, \}", s)
        if m:
            self.vars[m.group(1)]["protocols"] = [{"destinationNamedPort": self.vars[m.group(2)]}]
            return
        # The inline-CIDR tests add a rule whose networks are pod IPs with
        # a host mask: the runner's hostCIDR template is exactly that.
        if s == "var mask string" or \
                re.fullmatch(r'if net\.IsIPv4String\(\w+\.Status\.PodIP\) \{ mask = "/32" \} else \{ mask = "/128" \}', s):
            return
        m = re.fullmatch(r"newRule := \[\]api\.ClusterNetworkPolicyEgressRule\{ \{ Name: \"([^\"]+)\", Action: \"(\w+)\", "
                         r"To: \[\]api\.ClusterNetworkPolicyEgressPeer\{ \{ Networks: \[\]api\.CIDR\{ (.*?) \}, \}, \}, \}, \}", s)
        if m:
            nets = ["{{hostCIDR %s}}" % self.pod_var(v) for v in re.findall(r"api\.CIDR\((\w+)\.Status\.PodIP \+ mask\)", m.group(3))]
            self.vars["newRule"] = [{"name": m.group(1), "action": m.group(2), "to": [{"networks": nets}]}]
            return
        if s == "mutate.Spec.Egress = append(newRule, mutate.Spec.Egress...)":
            self.vars["mutate"]["spec"]["egress"] = self.vars["newRule"] + self.vars["mutate"]["spec"]["egress"]
            return
        if s == "kubernetes.PatchClusterNetworkPolicy(t, s.Client, cnp, mutate, s.TimeoutConfig.GetTimeout)":
            obj = self.vars["mutate"]
            self.objs[key_of(obj)] = copy.deepcopy(obj)
            self.change(steps, {"apply": copy.deepcopy(obj), "mode": "update"})
            return
        m = re.fullmatch(r'namespace :?= kubernetes\.GetNamespace\(t, s\.Client, "([^"]+)", s\.TimeoutConfig\.GetTimeout\)', s)
        if m:
            self.vars["namespace"] = m.group(1)
            return
        if re.fullmatch(r"mutateNamespace :?= namespace\.DeepCopy\(\)", s):
            return
        m = re.fullmatch(r'mutateNamespace\.SetLabels\(map\[string\]string\{"([^"]+)": "([^"]+)"\}\)', s)
        if m:
            self.vars["nslabels"] = {m.group(1): m.group(2)}
            return
        if s == "kubernetes.PatchNamespace(t, s.Client, namespace, mutateNamespace, s.TimeoutConfig.GetTimeout)":
            ns = self.vars["namespace"]
            # SetLabels replaces them all; the API server puts back
            # kubernetes.io/metadata.name.
            labels = dict(self.vars["nslabels"], **{"kubernetes.io/metadata.name": ns})
            self.ns_labels[ns] = labels
            self.change(steps, {"label_namespace": {"name": ns, "labels": labels, "replace": True}})
            return
        m = re.fullmatch(r'kubernetes\.(Set|Remove)PodLabel\(t, s\.Client, "([^"]+)", "([^"]+)", (\w+)(?:, "([^"]*)")?, s\.TimeoutConfig\.GetTimeout\)', s)
        if m:
            pid = m.group(2) + "/" + m.group(3)
            key = self.consts[m.group(4)]
            labels = dict(self.pod_labels[pid])
            if m.group(1) == "Set":
                labels[key] = m.group(5)
            else:
                labels.pop(key, None)
            self.pod_labels[pid] = labels
            self.change(steps, {"label_pod": {"namespace": m.group(2), "name": m.group(3), "labels": labels, "replace": True}})
            return
        # Integration: a NetworkPolicy of the manifest is deleted.
        if s in ("ctx, cancel := context.WithTimeout(context.Background(), s.TimeoutConfig.GetTimeout)", "defer cancel()",
                 "np := &networkingv1.NetworkPolicy{}") or s.startswith("require.NoErrorf(t, err,"):
            return
        m = re.fullmatch(r'err := s\.Client\.Get\(ctx, client\.ObjectKey\{ Namespace: "([^"]+)", Name: "([^"]+)", \}, np\)', s)
        if m:
            self.vars["np"] = ("NetworkPolicy", m.group(1), m.group(2))
            return
        if s == "err = s.Client.Delete(ctx, np)":
            k = self.vars["np"]
            del self.objs[k]
            self.change(steps, {"delete": {"kind": "NetworkPolicy", "namespace": k[1], "name": k[2]}})
            return
        raise ValueError("%s: statement not understood: %s" % (self.test["short"], s))


def main():
    d = module_dir()
    model = build_model(d)
    tests_dir = os.path.join(d, "conformance", "tests")
    cases = []
    files = sorted(f for f in os.listdir(tests_dir) if f.endswith(".go") and f != "main.go")
    # String constants are package-wide (conformanceRoleLabel).
    consts = {}
    for f in files:
        consts.update(re.findall(r'const (\w+) = "([^"]*)"', open(os.path.join(tests_dir, f)).read()))
    for f in files:
        for t in conformance_tests(os.path.join(tests_dir, f), consts):
            cases.extend(Transcriber(model, t, d, f).run())
    model["source"]["files"] += ["conformance/tests/" + f for f in files]
    with open(os.path.join(HERE, "model.json"), "w") as out:
        json.dump(model, out, indent=1)
        out.write("\n")
    with open(os.path.join(HERE, "cases.json"), "w") as out:
        json.dump(cases, out, indent=1)
        out.write("\n")
    std = sum(1 for c in cases if "Channel:Standard" in c["tags"])
    print("%d cases (%d standard, %d experimental) from %d files" % (len(cases), std, len(cases) - std, len(files)))


if __name__ == "__main__":
    main()
