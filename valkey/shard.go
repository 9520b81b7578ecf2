package valkey

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	valkeygo "github.com/valkey-io/valkey-go"
)

// slotMapAge is how long a cluster's slot map is used before it is read
// again (at the next subscription that needs it). A map gone stale in
// between (slots moved) only costs latency: a channel subscribed on a node
// that no longer serves it still gets its messages, over the cluster bus.
const slotMapAge = 30 * time.Second

// slotRetry is how soon a slot map that could not be read is tried again.
const slotRetry = time.Second

// slotMap says which node of a cluster serves a channel's slot, so that
// the notifier subscribes there (see notifier): from CLUSTER SLOTS, read
// when first needed, again when older than slotMapAge, and after a pub/sub
// connection broke (the node may have failed over). One caller reads it
// at a time; the others use the map they have meanwhile.
type slotMap struct {
	client valkeygo.Client
	log    *slog.Logger

	mu       sync.Mutex
	ranges   []slotRange // sorted by lo
	at       time.Time   // when last read (or tried)
	stale    bool
	fetching bool
}

// slotRange is a range of slots, lo to hi inclusive, and the address of
// the primary that serves it.
type slotRange struct {
	lo, hi int64
	addr   string
}

// invalidate makes the next lookup read the map again.
func (m *slotMap) invalidate() {
	m.mu.Lock()
	m.stale = true
	m.mu.Unlock()
}

// nodeFor returns the address of the node that serves channel ch's slot,
// or "" when it is not known.
func (m *slotMap) nodeFor(ctx context.Context, ch string) string {
	cmd := m.client.B().Get().Key(ch).Build() // never sent: it computes the slot
	slot := int64(cmd.Slot())
	m.mu.Lock()
	refresh := !m.fetching && (m.stale || m.at.IsZero() || time.Since(m.at) > slotMapAge)
	if refresh {
		m.fetching = true
	}
	ranges := m.ranges
	m.mu.Unlock()
	if refresh {
		rs, err := m.fetch(ctx)
		m.mu.Lock()
		m.fetching, m.at, m.stale = false, time.Now(), false
		if err == nil {
			m.ranges, ranges = rs, rs
		} else {
			m.at = m.at.Add(slotRetry - slotMapAge) // try again soon, not at every subscription
		}
		m.mu.Unlock()
		if err != nil {
			m.log.Debug("dlock/valkey: reading the cluster's slot map failed; subscribing on any node", "err", err)
		}
	}
	i, _ := slices.BinarySearchFunc(ranges, slot, func(r slotRange, s int64) int {
		switch {
		case r.hi < s:
			return -1
		case r.lo > s:
			return 1
		}
		return 0
	})
	if i < len(ranges) && ranges[i].lo <= slot && slot <= ranges[i].hi {
		return ranges[i].addr
	}
	return ""
}

// fetch reads the slot map (CLUSTER SLOTS), bounded by ctx and
// subscribeTimeout.
func (m *slotMap) fetch(ctx context.Context) ([]slotRange, error) {
	ctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	return parseSlotMap(m.client.Do(ctx, m.client.B().ClusterSlots().Build()))
}

// parseSlotMap reads an answer to CLUSTER SLOTS: entries of the first
// slot, the last and the primary's address (host, port, ...), then its
// replicas. Entries without a host the client could dial ("" or "?") are
// left out: their slots count as not known.
func parseSlotMap(res valkeygo.ValkeyResult) ([]slotRange, error) {
	entries, err := res.ToArray()
	if err != nil {
		return nil, err
	}
	var out []slotRange
	for _, e := range entries {
		v, err := e.ToArray()
		if err != nil || len(v) < 3 {
			return nil, fmt.Errorf("CLUSTER SLOTS: unexpected entry %v", e)
		}
		lo, err1 := v[0].AsInt64()
		hi, err2 := v[1].AsInt64()
		p, err3 := v[2].ToArray()
		if err1 != nil || err2 != nil || err3 != nil || len(p) < 2 {
			return nil, fmt.Errorf("CLUSTER SLOTS: unexpected entry %v", e)
		}
		host, err1 := p[0].ToString()
		port, err2 := p[1].AsInt64()
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("CLUSTER SLOTS: unexpected entry %v", e)
		}
		if host == "" || host == "?" {
			continue
		}
		out = append(out, slotRange{lo: lo, hi: hi, addr: net.JoinHostPort(host, strconv.FormatInt(port, 10))})
	}
	slices.SortFunc(out, func(a, b slotRange) int { return int(a.lo - b.lo) })
	return out, nil
}
