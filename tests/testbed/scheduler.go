package testbed

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// StartScheduler binds every Pod created without spec.nodeName to the node
// with a pod runner that has been given the fewest pods so far, round robin
// among equals: enough to spread a demo or a test across nodes, and
// deterministic for a given order of creation. Cleanup stops it.
func (cp *ControlPlane) StartScheduler(tb TB) {
	tb.Helper()
	factory := informers.NewSharedInformerFactoryWithOptions(cp.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", "").String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
				queue.Add(key)
			}
		},
	}); err != nil {
		tb.Fatalf("scheduler: %v", err)
	}
	given := map[*PodRunner]int{}
	bind := func(key string) error {
		obj, exists, err := inf.GetStore().GetByKey(key)
		if err != nil || !exists {
			return err
		}
		pod := obj.(*corev1.Pod)
		if pod.Spec.NodeName != "" || pod.DeletionTimestamp != nil {
			return nil
		}
		var best *PodRunner
		for _, r := range cp.runners() {
			if best == nil || given[r] < given[best] {
				best = r
			}
		}
		if best == nil {
			// No node runs pods yet; the pod stays Pending, as it would.
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), apiTimeout)
		defer cancel()
		err = cp.Client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: best.node.Name},
		}, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		if err == nil {
			given[best]++
		}
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { inf.Run(ctx.Done()) })
	// One worker: the counts in given need no lock.
	wg.Go(func() {
		for {
			key, quit := queue.Get()
			if quit {
				return
			}
			if err := bind(key); err != nil {
				tb.Logf("scheduler: bind %s: %v (retrying)", key, err)
				queue.AddRateLimited(key)
			} else {
				queue.Forget(key)
			}
			queue.Done(key)
		}
	})
	tb.Cleanup(func() {
		cancel()
		queue.ShutDown()
		wg.Wait()
	})
}
