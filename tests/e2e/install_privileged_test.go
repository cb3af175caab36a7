package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/palisade-cni/palisade/bpf"
	"github.com/palisade-cni/palisade/daemon/agentapi"
	"github.com/palisade-cni/palisade/tests/privileged"
	"github.com/palisade-cni/palisade/tests/testbed"
)

// manifest decodes the objects of conf/kubernetes/<name>.
func manifest(t *testing.T, name string) []runtime.Object {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testbed.ModuleRoot(t), "conf", "kubernetes", name))
	if err != nil {
		t.Fatal(err)
	}
	return decodeObjects(t, name, data)
}

// decodeObjects decodes a multi-document YAML stream of API objects.
func decodeObjects(t *testing.T, name string, data []byte) []runtime.Object {
	t.Helper()
	var objs []runtime.Object
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if string(js) == "null" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(js, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// daemonSet returns the DaemonSet of conf/kubernetes/<name>.
func daemonSet(t *testing.T, name string) *appsv1.DaemonSet {
	t.Helper()
	for _, obj := range manifest(t, name) {
		if ds, ok := obj.(*appsv1.DaemonSet); ok {
			return ds
		}
	}
	t.Fatalf("%s has no DaemonSet", name)
	return nil
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

// grants lists what RBAC rules grant, as "group/resource:verb".
func grants(rules []rbacv1.PolicyRule) map[string]bool {
	granted := map[string]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					granted[g+"/"+res+":"+v] = true
				}
			}
		}
	}
	return granted
}

// TestManifestRules checks the rules the manifests promise, each of which
// the API server would accept broken.
func TestManifestRules(t *testing.T) {
	objs := manifest(t, "palisade.yaml")
	var role *rbacv1.ClusterRole
	var nsRole *rbacv1.Role
	var ns *corev1.Namespace
	for _, obj := range objs {
		switch o := obj.(type) {
		case *rbacv1.ClusterRole:
			role = o
		case *rbacv1.Role:
			nsRole = o
		case *corev1.Namespace:
			ns = o
		}
	}
	if role == nil || nsRole == nil || ns == nil {
		t.Fatalf("ClusterRole %v, Role %v, Namespace %v: want all three", role != nil, nsRole != nil, ns != nil)
	}
	want := map[string]bool{"/events:create": true, "/events:patch": true,
		"policy.networking.k8s.io/clusternetworkpolicies/status:update": true, "policy.networking.k8s.io/clusternetworkpolicies/status:patch": true}
	for _, res := range []string{"/pods", "/namespaces", "/services", "/nodes", "networking.k8s.io/networkpolicies", "discovery.k8s.io/endpointslices", "policy.networking.k8s.io/clusternetworkpolicies"} {
		for _, v := range []string{"get", "list", "watch"} {
			want[res+":"+v] = true
		}
	}
	if granted := grants(role.Rules); fmt.Sprint(granted) != fmt.Sprint(want) {
		t.Errorf("ClusterRole grants %v, want exactly %v", granted, want)
	}
	// Leases only in the agent's own namespace, where it publishes status.
	wantNS := map[string]bool{"coordination.k8s.io/leases:get": true, "coordination.k8s.io/leases:create": true, "coordination.k8s.io/leases:update": true}
	if granted := grants(nsRole.Rules); fmt.Sprint(granted) != fmt.Sprint(wantNS) || nsRole.Namespace != ns.Name {
		t.Errorf("Role in %s grants %v, want exactly %v in %s", nsRole.Namespace, granted, wantNS, ns.Name)
	}
	// Pod Security: the agent needs privileged (hostNetwork, hostPath,
	// capabilities); without the label a baseline default refuses it.
	if l := ns.Labels["pod-security.kubernetes.io/enforce"]; l != "privileged" {
		t.Errorf("namespace %s enforces Pod Security %q, want privileged", ns.Name, l)
	}

	ds := daemonSet(t, "palisade.yaml")
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" {
		t.Errorf("hostNetwork %v, priorityClassName %q; want true, system-node-critical", spec.HostNetwork, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one that tolerates every taint", spec.Tolerations)
	}
	agent := container(t, spec.Containers, "agent")
	if c := agent.SecurityContext.Capabilities; !slices.Equal(c.Drop, []corev1.Capability{"ALL"}) || len(c.Add) == 0 {
		t.Errorf("agent capabilities %+v, want ALL dropped and a few added", c)
	}
	if agent.SecurityContext.Privileged != nil && *agent.SecurityContext.Privileged {
		t.Error("agent runs privileged")
	}
	healthAddr := ""
	for _, a := range agent.Command {
		if v, ok := strings.CutPrefix(a, "--health-addr="); ok {
			healthAddr = v
		}
	}
	for probe, path := range map[*corev1.Probe]string{agent.ReadinessProbe: "/readyz", agent.LivenessProbe: "/healthz"} {
		if probe == nil || probe.HTTPGet == nil {
			t.Fatalf("agent lacks an HTTP probe on %s", path)
		}
		got := net.JoinHostPort(probe.HTTPGet.Host, probe.HTTPGet.Port.String())
		if probe.HTTPGet.Path != path || got != healthAddr {
			t.Errorf("probe %s on %s, want %s on --health-addr %s", probe.HTTPGet.Path, got, path, healthAddr)
		}
	}
	env := map[string]string{}
	for _, e := range agent.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["NODE_NAME"] != "spec.nodeName" || env["POD_NAMESPACE"] != "metadata.namespace" || env["HOST_IP"] != "status.hostIP" {
		t.Errorf("agent env %v, want NODE_NAME from spec.nodeName, POD_NAMESPACE from metadata.namespace, HOST_IP from status.hostIP", env)
	}
	if !slices.Contains(agent.Command, "--metrics-addr=$(HOST_IP)") {
		t.Errorf("agent command %v, want --metrics-addr=$(HOST_IP): Prometheus scrapes the node's address", agent.Command)
	}
	// Every container: a scheduling request (a node-critical DaemonSet
	// must not be BestEffort), no privilege escalation, a seccomp profile.
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("container %s requests %v, want CPU and memory", c.Name, c.Resources.Requests)
		}
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.SeccompProfile == nil {
			t.Errorf("container %s: want allowPrivilegeEscalation false and a seccomp profile, got %+v", c.Name, sc)
		}
	}
	mounts := map[string]bool{}
	for _, m := range agent.VolumeMounts {
		mounts[m.MountPath] = true
	}
	for _, c := range spec.InitContainers {
		for _, m := range c.VolumeMounts {
			mounts[m.MountPath] = true
		}
	}
	for _, p := range []string{"/sys/fs/bpf", "/run/palisade", "/opt/cni/bin", "/etc/cni/net.d"} {
		if !mounts[p] {
			t.Errorf("no mount at %s", p)
		}
	}
	install := container(t, spec.InitContainers, "install-cni")
	if len(install.Command) < 2 || install.Command[1] != "install-cni" {
		t.Errorf("init container runs %v, want the installer", install.Command)
	}
}

// TestPrivilegedManifestsDryRun sends every object of the manifests to a
// real kube-apiserver with server-side dry run (kubectl apply
// --dry-run=server): schema, defaults and admission (the priority class
// must exist) all run, nothing is stored.
func TestPrivilegedManifestsDryRun(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	c := cp.Client
	sources := map[string][]runtime.Object{}
	for _, m := range testbed.ChartManifests {
		sources[m.File] = manifest(t, m.File)
	}
	// The chart with every option whose kinds the API server knows
	// without prometheus-operator's CRDs, as `helm template` renders it.
	chartArgs := []string{"--namespace", "palisade-system", "--set", "namespace.create=true", "--set", "metrics.dashboard.enabled=true",
		"--set", "metrics.address=all", "--set", "agent.extraArgs={--attach-mode=tc}"}
	sources["helm template "+strings.Join(chartArgs, " ")] = decodeObjects(t, "chart", testbed.RenderChart(t, chartArgs...))
	for file, objs := range sources {
		for _, obj := range objs {
			var err error
			switch o := obj.(type) {
			case *corev1.Namespace:
				if _, err := c.CoreV1().Namespaces().Get(ctx, o.Name, metav1.GetOptions{}); err == nil {
					continue // created for an earlier file (the k3s variant has the same)
				}
				if _, err = c.CoreV1().Namespaces().Create(ctx, o, dry); err == nil {
					// Namespaced objects are checked against a real one.
					_, err = c.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
					t.Cleanup(func() { _ = c.CoreV1().Namespaces().Delete(context.Background(), o.Name, metav1.DeleteOptions{}) })
				}
			case *corev1.ServiceAccount:
				_, err = c.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, dry)
			case *rbacv1.ClusterRole:
				_, err = c.RbacV1().ClusterRoles().Create(ctx, o, dry)
			case *rbacv1.ClusterRoleBinding:
				_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, o, dry)
			case *rbacv1.Role:
				_, err = c.RbacV1().Roles(o.Namespace).Create(ctx, o, dry)
			case *rbacv1.RoleBinding:
				_, err = c.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, dry)
			case *corev1.Service:
				_, err = c.CoreV1().Services(o.Namespace).Create(ctx, o, dry)
			case *corev1.ConfigMap:
				_, err = c.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, dry)
			case *appsv1.DaemonSet:
				_, err = c.AppsV1().DaemonSets(o.Namespace).Create(ctx, o, dry)
			default:
				t.Fatalf("%s: no dry run for %T; add it here", file, obj)
			}
			if err != nil {
				t.Errorf("%s: %T rejected: %v", file, obj, err)
			}
		}
	}
}

// dsCommand is a DaemonSet container's command line, for the testbed:
// flags named in subst get the test's value (paths the test must isolate),
// the binary becomes the one built for the test, and the container's
// capabilities become the process's bounding set, so a capability missing
// from the manifest fails the test.
func dsCommand(t *testing.T, c corev1.Container, bin string, subst map[string]string) []string {
	t.Helper()
	caps := []string{"-all"}
	if c.SecurityContext != nil && c.SecurityContext.Capabilities != nil {
		for _, add := range c.SecurityContext.Capabilities.Add {
			caps = append(caps, "+"+strings.ToLower(string(add)))
		}
	}
	argv := []string{"setpriv", "--bounding-set", strings.Join(caps, ","), "--inh-caps", "-all"}
	if sc := c.SecurityContext; sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		// What allowPrivilegeEscalation: false makes the runtime set.
		argv = append(argv, "--no-new-privs")
	}
	argv = append(argv, "--", bin)
	used := map[string]bool{}
	for _, a := range append(slices.Clone(c.Command[1:]), c.Args...) {
		if name, _, ok := strings.Cut(a, "="); ok {
			if v, ok := subst[name]; ok {
				a, used[name] = name+"="+v, true
			}
		}
		argv = append(argv, a)
	}
	for name, v := range subst {
		if !used[name] {
			if name != "--kubeconfig" {
				t.Fatalf("container %s has no %s flag to substitute", c.Name, name)
			}
			// In-cluster credentials do not exist on the testbed.
			argv = append(argv, name+"="+v)
		}
	}
	return argv
}

// downwardEnv returns c's env as NAME=value from the downward API fields
// given, and expands $(NAME) in argv in place. A field the test does not
// know fails it: the manifest grew a variable the test must supply.
func downwardEnv(t *testing.T, c corev1.Container, fields map[string]string, argv []string) []string {
	t.Helper()
	var env []string
	vars := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
			t.Fatalf("container %s: env %s is not from the downward API; supply it here", c.Name, e.Name)
		}
		v, ok := fields[e.ValueFrom.FieldRef.FieldPath]
		if !ok {
			t.Fatalf("container %s: env %s from %s, which the test does not supply", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	for i, a := range argv {
		for name, v := range vars {
			a = strings.ReplaceAll(a, "$("+name+")", v)
		}
		if strings.Contains(a, "$(") {
			t.Fatalf("container %s: %q names a variable its env lacks", c.Name, a)
		}
		argv[i] = a
	}
	return env
}

func bpfRoot(t *testing.T) string {
	t.Helper()
	root := filepath.Join("/sys/fs/bpf", "palisade-test-"+fmt.Sprint(time.Now().UnixNano()))
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	return root
}

// cniCacheDir is where the testbed's runtime (libcni) caches the node's
// results.
func cniCacheDir(n *testbed.Node) string { return n.CNICacheDir() }

// TestPrivilegedDaemonSetOnTestbed runs the DaemonSet's own commands on a
// testbed node: the installer against a Flannel conflist, the agent with
// exactly the manifest's capabilities (a pod added through the chain is
// enforced), then the uninstall manifest's command, which leaves no program
// attached, no pin, and the conflist as Flannel wrote it.
func TestPrivilegedDaemonSetOnTestbed(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	bin := testbed.Binaries(t).Agent(t)
	plugin := testbed.Binaries(t).Plugin(t)
	ds := daemonSet(t, "palisade.yaml")
	ctx := context.Background()

	// The installer, on directories standing in for the node's.
	cniBin, cniConf := t.TempDir(), t.TempDir()
	flannel, err := os.ReadFile(filepath.Join(testbed.ModuleRoot(t), "daemon", "install", "testdata", "10-flannel.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cniConf, "10-flannel.conflist"), flannel, 0o644); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{"--cni-bin-dir": cniBin, "--cni-conf-dir": cniConf}
	install := container(t, ds.Spec.Template.Spec.InitContainers, "install-cni")
	installArgv := dsCommand(t, install, bin, dirs)
	installArgv = append(installArgv, "--plugin-src="+plugin)
	inst := testbed.NewProcess(t, node.NetNS, "install-cni", installArgv...)
	if err := inst.Start(); err != nil {
		t.Fatal(err)
	}
	<-inst.Exited()
	if err := inst.ExitErr(); err != nil {
		t.Fatalf("install-cni: %v\n%s", err, inst.LogTail(20))
	}
	chained, err := os.ReadFile(filepath.Join(cniConf, "10-flannel.conflist"))
	if err != nil || !strings.Contains(string(chained), `{"type": "palisade"}`) {
		t.Fatalf("conflist after install-cni (%v):\n%s", err, chained)
	}
	if _, err := os.Stat(filepath.Join(cniBin, "palisade")); err != nil {
		t.Fatalf("plugin not installed: %v", err)
	}

	// The agent, with the manifest's flags and capabilities.
	root, state := bpfRoot(t), t.TempDir()
	agentC := container(t, ds.Spec.Template.Spec.Containers, "agent")
	argv := dsCommand(t, agentC, bin, map[string]string{
		"--socket": node.AgentSocket(), "--state-dir": state, "--bpf-root": root,
		"--cni-cache-dir": cniCacheDir(node), "--kubeconfig": cp.Kubeconfig(),
	})
	// The env the downward API sets, and $(VAR) in the command expanded
	// from it, as the kubelet does.
	argv = append(append([]string{"env"}, downwardEnv(t, agentC, map[string]string{
		"spec.nodeName": node.Name, "metadata.namespace": "palisade-system", "status.hostIP": node.IP.String(),
	}, argv)...), argv...)
	agent := testbed.NewProcess(t, node.NetNS, "palisade-agent-ds", argv...)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	client := agentapi.NewClient(node.AgentSocket())
	waitFor(t, "the DaemonSet's agent to be ready", func() bool {
		st, err := client.Status(ctx)
		return err == nil && st.Ready
	})
	if got := healthStatus(t, node, "/readyz"); got != 200 {
		t.Errorf("readiness probe: %d", got)
	}

	cp.CreateNamespace(t, "prod", nil)
	backend := node.AddPod(t, testbed.MakePod("prod", "backend", map[string]string{"role": "backend"}, testbed.TCP(6379)))
	frontend := node.AddPod(t, testbed.MakePod("prod", "frontend", map[string]string{"role": "frontend"}, testbed.TCP(80)))
	other := node.AddPod(t, testbed.MakePod("prod", "other", map[string]string{"role": "other"}, testbed.TCP(80)))
	cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
	eventually(t,
		expect{frontend, backend, 6379, corev1.ProtocolTCP, testbed.Connected},
		expect{other, backend, 6379, corev1.ProtocolTCP, testbed.TimedOut},
	)

	// Uninstall, as conf/kubernetes/uninstall.yaml runs it, after the agent
	// is gone (the DaemonSet deleted).
	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	un := container(t, daemonSet(t, "uninstall.yaml").Spec.Template.Spec.Containers, "uninstall")
	unArgv := dsCommand(t, un, bin, map[string]string{
		"--cni-bin-dir": cniBin, "--cni-conf-dir": cniConf, "--bpf-root": root, "--state-dir": state,
	})
	unArgv = slices.DeleteFunc(unArgv, func(a string) bool { return a == "--stay" })
	unp := testbed.NewProcess(t, node.NetNS, "uninstall", unArgv...)
	if err := unp.Start(); err != nil {
		t.Fatal(err)
	}
	<-unp.Exited()
	if err := unp.ExitErr(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, unp.LogTail(20))
	}
	for _, p := range []*testbed.Pod{backend, frontend, other} {
		_, ifindex := p.HostVeth()
		var err error
		_ = node.Do(func() error { err = bpf.Attached(ifindex); return nil })
		if !errors.Is(err, bpf.ErrNotAttached) {
			t.Errorf("pod %s after uninstall: %v, want no program attached", p, err)
		}
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bpf root after uninstall: %v, want gone", err)
	}
	got, _ := os.ReadFile(filepath.Join(cniConf, "10-flannel.conflist"))
	if !bytes.Equal(got, flannel) {
		t.Errorf("conflist after uninstall is not Flannel's:\n%s", got)
	}
	if entries, _ := os.ReadDir(cniBin); len(entries) != 0 {
		t.Errorf("CNI bin dir after uninstall holds %v", entries)
	}
	// Without Palisade every pod reaches every pod again.
	eventually(t, expect{other, backend, 6379, corev1.ProtocolTCP, testbed.Connected})
}

// TestPrivilegedAdoption creates pods through the chain without palisade,
// as before an install, then starts the agent: it adopts them (no restart,
// no CNI call) and a policy is enforced on them.
func TestPrivilegedAdoption(t *testing.T) {
	privileged.Require(t)
	cp := testbed.StartControlPlane(t)
	node := cp.AddNode(t, "node-1", 1)
	cp.CreateNamespace(t, "prod", nil)
	without := testbed.WithoutPalisade()
	backend := node.AddPod(t, testbed.MakePod("prod", "backend", map[string]string{"role": "backend"}, testbed.TCP(6379)), without)
	frontend := node.AddPod(t, testbed.MakePod("prod", "frontend", map[string]string{"role": "frontend"}, testbed.TCP(80)), without)
	other := node.AddPod(t, testbed.MakePod("prod", "other", map[string]string{"role": "other"}, testbed.TCP(80)), without)
	cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
	// Nothing enforces it yet.
	eventually(t, expect{other, backend, 6379, corev1.ProtocolTCP, testbed.Connected})

	agent := node.StartAgent(t, testbed.AgentOptions{Args: []string{"--cni-cache-dir=" + cniCacheDir(node)}})
	// Ready means adopted: no polling for the policy to arrive.
	for _, e := range []expect{
		{frontend, backend, 6379, corev1.ProtocolTCP, testbed.Connected},
		{other, backend, 6379, corev1.ProtocolTCP, testbed.TimedOut},
	} {
		if got := testbed.Probe(context.Background(), e.from, e.to.IP(), e.port, e.proto); got.Outcome != e.want {
			t.Errorf("right after ready, %s -> %s: %s, want %s", e.from, e.to, got, e.want)
		}
	}
	eps, err := agent.Client().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	adopted := map[string]bool{}
	for _, ep := range eps {
		if ep.Adopted {
			adopted[ep.PodName] = ep.ID == agentapi.EndpointID(podByName(backend, frontend, other)[ep.PodName].ContainerID, testbed.PodIfName)
		}
	}
	if fmt.Sprint(adopted) != "map[backend:true frontend:true other:true]" {
		t.Errorf("adopted endpoints (name: has the runtime's ID) %v, want all three", adopted)
	}

	// A restarted agent keeps them as its own (restore, not adoption).
	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, expect{other, backend, 6379, corev1.ProtocolTCP, testbed.TimedOut}, expect{frontend, backend, 6379, corev1.ProtocolTCP, testbed.Connected})
	if eps, err := agent.Client().List(context.Background()); err != nil || len(eps) != 3 {
		t.Errorf("endpoints after restart: %d, %v; want 3", len(eps), err)
	}
}

func podByName(pods ...*testbed.Pod) map[string]*testbed.Pod {
	out := map[string]*testbed.Pod{}
	for _, p := range pods {
		out[p.Name] = p
	}
	return out
}

// attachedIDs lists the programs attached to both TCX hooks of ifindex.
func attachedIDs(t *testing.T, node *testbed.Node, ifindex int) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	err := node.Do(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				ids = append(ids, p.ID)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestPrivilegedUpgradeKeepsEnforcing restarts the agent (what a DaemonSet
// rollout does) while a long-lived allowed TCP connection exchanges a line
// every 20 ms and probes check an allowed and a denied pair: the new agent
// replaces the programs on every veth, no line is lost, the denied pair is
// never admitted and the allowed pair never refused.
func TestPrivilegedUpgradeKeepsEnforcing(t *testing.T) {
	env := newOneNode(t, "tcx")
	env.cp.ApplyPolicy(t, "prod", filepath.Join(testbed.ModuleRoot(t), "conf", "policies", "backend-access.yaml"))
	eventually(t,
		expect{env.frontend, env.backend, 6379, corev1.ProtocolTCP, testbed.Connected},
		expect{env.other, env.backend, 6379, corev1.ProtocolTCP, testbed.TimedOut},
	)
	// The long-lived flow: frontend -> backend on 6379, through a line echo
	// the test runs in place of the testbed's one-shot responder.
	echo := env.node.AddPod(t, testbed.MakePod("prod", "echo", map[string]string{"role": "backend"}, testbed.TCP(6380)))
	echo.ServeEcho(t, 6379)
	eventually(t, expect{env.other, echo, 6379, corev1.ProtocolTCP, testbed.TimedOut})
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	conn, err := env.frontend.NetNS.DialContext(dctx, "tcp", net.JoinHostPort(echo.IP().String(), "6379"))
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if !roundTrip(conn, r, "hello") {
		t.Fatal("long-lived connection does not echo before the upgrade")
	}
	_, echoIf := echo.HostVeth()
	before := attachedIDs(t, env.node, echoIf)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lines, lost, probes atomic.Int64
	var wrong sync.Map
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			lines.Add(1)
			if !roundTrip(conn, r, fmt.Sprint("line ", i)) {
				lost.Add(1)
				return
			}
		}
	})
	// One loop per pair, so that the allowed pair is probed often even
	// though each denied probe waits for its timeout.
	for _, e := range []expect{
		{env.frontend, env.backend, 6379, corev1.ProtocolTCP, testbed.Connected},
		{env.other, env.backend, 6379, corev1.ProtocolTCP, testbed.TimedOut},
	} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				probes.Add(1)
				pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				if got := testbed.Probe(pctx, e.from, e.to.IP(), e.port, e.proto); got.Outcome != e.want {
					wrong.Store(fmt.Sprintf("%s -> %s: %s", e.from, e.to, got), true)
				}
				cancel()
				time.Sleep(10 * time.Millisecond) // the machine is shared
			}
		})
	}

	start := time.Now()
	if err := env.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the rollout's gap between pods
	if err := env.agent.Start(); err != nil {
		t.Fatal(err)
	}
	restart := time.Since(start)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	t.Logf("agent replaced in %s; %d lines echoed, %d probes", restart, lines.Load(), probes.Load())

	if lost.Load() != 0 {
		t.Errorf("the established connection lost a line across the upgrade (after %d)", lines.Load())
	}
	wrong.Range(func(k, _ any) bool { t.Errorf("during the upgrade: %s", k); return true })
	if probes.Load() < 6 {
		t.Errorf("only %d probes ran during the upgrade", probes.Load())
	}
	after := attachedIDs(t, env.node, echoIf)
	if len(after) != 2 || len(before) != 2 || slices.Equal(before, after) {
		t.Errorf("programs on the echo pod's veth %v before, %v after; want both replaced by the new agent's", before, after)
	}
}
