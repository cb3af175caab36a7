package testbed

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// runnerWorkers is how many pods a node's runner sets up at once; a kubelet
// also starts pods in parallel.
const runnerWorkers = 4

// PodRunner stands in for a node's kubelet: it watches the Pods bound to
// the node and, for each, creates a sandbox namespace, serves every
// containerPort in it (listening before ADD, so the first packet after ADD
// finds a socket), runs the node's CNI chain through libcni (on a Flannel
// node, the file its conf dir holds at that moment) with a
// kubelet's CNI_ARGS, and writes the pod's IPs, phase and Ready. When a Pod
// is deleted it runs CNI DEL, removes the sandbox and confirms the deletion,
// as a kubelet does at the end of a grace period.
type PodRunner struct {
	node *Node
	tb   TB
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList

	informer cache.SharedIndexInformer
	queue    workqueue.TypedRateLimitingInterface[string]

	mu   sync.Mutex
	pods map[string]*runningPod // by namespace/name
}

type runningPod struct {
	pod  *Pod
	stop func() // the responders
}

// StartPodRunner starts the node's pod runner; opts choose the conflist as
// for AddPod. Cleanup stops it and tears down every pod it still runs.
func (n *Node) StartPodRunner(tb TB, opts ...CNIOption) *PodRunner {
	tb.Helper()
	r := &PodRunner{
		node:  n,
		tb:    tb,
		pods:  map[string]*runningPod{},
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 5*time.Second)),
	}
	if n.Network.Flannel() {
		// A runtime reads the conf dir for every sandbox (containerd
		// watches it): pods run whatever install-cni left there.
		if len(opts) > 0 {
			tb.Fatalf("pod runner on node %s: a Flannel node runs its conf dir's file, not CNI options", n.Name)
		}
	} else {
		r.cni, r.list = n.cni(tb, buildCNIOptions(opts))
	}
	factory := informers.NewSharedInformerFactoryWithOptions(n.cp.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", n.Name).String()
		}))
	r.informer = factory.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	if _, err := r.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		tb.Fatalf("pod runner on node %s: %v", n.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { r.informer.Run(ctx.Done()) })
	for range runnerWorkers {
		wg.Go(r.work)
	}
	tb.Cleanup(func() {
		cancel()
		r.queue.ShutDown()
		wg.Wait()
		r.mu.Lock()
		defer r.mu.Unlock()
		for key, rp := range r.pods {
			if err := r.teardown(rp); err != nil {
				tb.Errorf("pod runner on node %s: %v", n.Name, err)
			}
			delete(r.pods, key)
		}
	})
	syncCtx, syncCancel := context.WithTimeout(ctx, apiTimeout)
	defer syncCancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), r.informer.HasSynced) {
		tb.Fatalf("pod runner on node %s: pod cache did not sync", n.Name)
	}
	n.cp.mu.Lock()
	n.runner = r
	n.cp.mu.Unlock()
	return r
}

// Pod is the running pod namespace/name, or nil.
func (r *PodRunner) Pod(namespace, name string) *Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rp := r.pods[namespace+"/"+name]; rp != nil {
		return rp.pod
	}
	return nil
}

func (r *PodRunner) work() {
	for {
		key, quit := r.queue.Get()
		if quit {
			return
		}
		if err := r.sync(key); err != nil {
			r.tb.Logf("pod runner on node %s: %v (retrying)", r.node.Name, err)
			r.queue.AddRateLimited(key)
		} else {
			r.queue.Forget(key)
		}
		r.queue.Done(key)
	}
}

// sync makes the node's sandbox for key match the Pod object: level
// triggered, so a retry after any failure converges.
func (r *PodRunner) sync(key string) error {
	obj, exists, err := r.informer.GetStore().GetByKey(key)
	if err != nil {
		return fmt.Errorf("get %s from cache: %w", key, err)
	}
	var pod *corev1.Pod
	if exists {
		pod = obj.(*corev1.Pod)
		if pod.Annotations[UnmanagedAnnotation] != "" {
			return nil
		}
	}
	r.mu.Lock()
	rp := r.pods[key]
	r.mu.Unlock()
	gone := pod == nil || pod.DeletionTimestamp != nil
	if rp != nil && (gone || string(pod.UID) != rp.pod.UID) {
		if err := r.teardown(rp); err != nil {
			return err
		}
		r.mu.Lock()
		delete(r.pods, key)
		r.mu.Unlock()
		rp = nil
	}
	if pod != nil && pod.DeletionTimestamp != nil {
		return r.confirmDeletion(pod)
	}
	if pod == nil || rp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}
	p, stop, err := r.run(pod)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.pods[key] = &runningPod{pod: p, stop: stop}
	r.mu.Unlock()
	return nil
}

// run sets up the pod's sandbox. On failure it removes what it created.
func (r *PodRunner) run(obj *corev1.Pod) (p *Pod, stop func(), err error) {
	netns, err := CreateNetNS("pal-pod")
	if err != nil {
		return nil, nil, fmt.Errorf("pod %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	record(r.tb, "netns", netns.Name())
	p = &Pod{
		Name:        obj.Name,
		Namespace:   obj.Namespace,
		UID:         string(obj.UID),
		ContainerID: randomHex(32),
		NetNS:       netns,
		Node:        r.node,
		spec:        obj.DeepCopy(),
		cni:         r.cni,
		list:        r.list,
		listening:   true,
	}
	if r.node.Network.Flannel() {
		if p.cni, p.list, err = r.node.runtimeChain(r.tb); err != nil {
			_ = netns.Delete()
			return nil, nil, fmt.Errorf("pod %s: %w", p, err)
		}
	}
	p.rt = p.runtimeConf()
	defer func() {
		if err != nil {
			_ = r.teardown(&runningPod{pod: p, stop: stop})
		}
	}()
	// See PreparePod: a closed-port probe must be Refused every time.
	if err = netns.Sysctl("net/ipv4/icmp_ratelimit", "0"); err != nil {
		return p, nil, err
	}
	if stop, err = startResponders(netns, obj, nil, r.tb.Logf); err != nil {
		return p, nil, fmt.Errorf("serve pod %s: %w", p, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	if err = p.CNIAdd(ctx); err != nil {
		return p, stop, err
	}
	ctx, cancel2 := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel2()
	if err = p.writeRunning(ctx); err != nil && !apierrors.IsNotFound(err) {
		return p, stop, err
	}
	return p, stop, nil
}

// teardown is the kubelet's StopPodSandbox: responders, CNI DEL, netns.
func (r *PodRunner) teardown(rp *runningPod) error {
	if rp.stop != nil {
		rp.stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	return errors.Join(rp.pod.CNIDel(ctx), rp.pod.NetNS.Delete())
}

// confirmDeletion removes a Pod whose deletion has begun once its sandbox
// is gone, which is what a kubelet does; without it the Pod would stay
// Terminating and its namespace could never be deleted.
func (r *PodRunner) confirmDeletion(pod *corev1.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
	defer cancel()
	zero := int64(0)
	err := r.node.cp.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("confirm deletion of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// RunPod creates pod and waits until a node's pod runner runs it (the
// scheduler binds it when spec.nodeName is empty). Cleanup deletes the Pod
// and waits until its runner has torn it down.
func (cp *ControlPlane) RunPod(tb TB, pod *corev1.Pod) *Pod {
	tb.Helper()
	spec := pod.DeepCopy()
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	pods := cp.Client.CoreV1().Pods(spec.Namespace)
	ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
	defer cancel()
	created, err := pods.Create(ctx, spec, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cniTimeout)
		defer cancel()
		zero := int64(0)
		if err := pods.Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			tb.Errorf("delete pod %s/%s: %v", created.Namespace, created.Name, err)
			return
		}
		if err := cp.waitPod(ctx, created, false); err != nil {
			tb.Errorf("cleanup: %v", err)
		}
	})
	if err := cp.waitPod(ctx, created, true); err != nil {
		tb.Fatal(err)
	}
	return cp.RunningPod(created.Namespace, created.Name)
}

// RunningPod finds the pod namespace/name on whichever node runs it, or nil.
func (cp *ControlPlane) RunningPod(namespace, name string) *Pod {
	for _, r := range cp.runners() {
		if p := r.Pod(namespace, name); p != nil {
			return p
		}
	}
	return nil
}

// waitPod waits until pod is running with a status written (running) or no
// runner runs it any more (!running).
func (cp *ControlPlane) waitPod(ctx context.Context, pod *corev1.Pod, running bool) error {
	for {
		p := cp.RunningPod(pod.Namespace, pod.Name)
		if running && p != nil && p.UID == string(pod.UID) {
			return nil
		}
		if !running && (p == nil || p.UID != string(pod.UID)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for pod %s/%s to be running=%v: %w", pod.Namespace, pod.Name, running, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runners are the pod runners of the nodes, in the order nodes were added.
func (cp *ControlPlane) runners() []*PodRunner {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var rs []*PodRunner
	for _, n := range cp.nodes {
		if n.runner != nil {
			rs = append(rs, n.runner)
		}
	}
	return rs
}
