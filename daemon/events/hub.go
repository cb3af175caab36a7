package events

import (
	"sync"

	"github.com/palisade-cni/palisade/daemon/agentapi"
)

// DefaultRecent is how many flows a Hub keeps for palisadectl flows
// without --follow: at 64 KiB or so, a few minutes of a busy node's drops.
const DefaultRecent = 1024

// subscriberBuffer is how many flows a slow subscriber may lag behind before
// it misses some: a stalled palisadectl never blocks the reader.
const subscriberBuffer = 256

// Hub keeps the recent flows and fans new ones out to subscribers.
type Hub struct {
	mu     sync.Mutex
	recent []agentapi.Flow
	next   int
	full   bool
	subs   map[chan agentapi.Flow]struct{}
	missed uint64
}

// NewHub keeps the last n flows.
func NewHub(n int) *Hub {
	return &Hub{recent: make([]agentapi.Flow, n), subs: map[chan agentapi.Flow]struct{}{}}
}

// Publish records f and offers it to every subscriber.
func (h *Hub) Publish(f agentapi.Flow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.recent) > 0 {
		h.recent[h.next] = f
		h.next = (h.next + 1) % len(h.recent)
		h.full = h.full || h.next == 0
	}
	for ch := range h.subs {
		select {
		case ch <- f:
		default:
			h.missed++
		}
	}
}

// Recent returns the kept flows that match, oldest first.
func (h *Hub) Recent(filter agentapi.FlowFilter) []agentapi.Flow {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []agentapi.Flow
	add := func(fs []agentapi.Flow) {
		for i := range fs {
			if filter.Match(&fs[i]) {
				out = append(out, fs[i])
			}
		}
	}
	if h.full {
		add(h.recent[h.next:])
	}
	add(h.recent[:h.next])
	return out
}

// Subscribe returns a channel of new flows; call cancel when done.
func (h *Hub) Subscribe() (<-chan agentapi.Flow, func()) {
	ch := make(chan agentapi.Flow, subscriberBuffer)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs, ch)
		h.mu.Unlock()
	}
}

// Missed counts flows a slow subscriber did not get.
func (h *Hub) Missed() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.missed
}
