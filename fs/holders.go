//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dlock-go/dlock/backend"
	"github.com/dlock-go/dlock/internal/holder"
)

// Holder records (backend.LockDescriber, RWDescriber, SemaphoreDescriber),
// shared by both implementations. A holder's record is internal/holder's
// stored form followed by a newline, kept in a record slot of the file it
// locks: slot 0, right after the fencing counter (so that an exclusive
// holder writes its counter and its record in one write), is the exclusive
// holder's (a mutex, a writer, a semaphore ticket); slots 1, 2, ... are
// readers' (each reader claims one: see the implementations). What says
// whether a record's holder still holds is a lock, never the record: a
// record stays in the file after its holder lets go or dies.

const (
	// recordSlot is the size of a record slot; slot i > 0 starts at
	// i*recordSlot (the file is sparse), slot 0 at counterLen.
	recordSlot = 8192
	// maxRecordSlots bounds the readers that leave a record at once; a
	// reader beyond it holds its lock without one (Holders does not list
	// it).
	maxRecordSlots = 1 << 16
	// maxRecord is the longest record stored (newline excluded): an owner
	// text whose escaped form would not fit is cut.
	maxRecord = recordSlot - counterLen - 1
)

var (
	_ backend.LockDescriber      = (*Backend)(nil)
	_ backend.RWDescriber        = (*Backend)(nil)
	_ backend.SemaphoreDescriber = (*Backend)(nil)
)

// recordOffset is where the record of slot starts.
func recordOffset(slot int) int64 {
	if slot == 0 {
		return counterLen
	}
	return int64(slot) * recordSlot
}

// self is this process as a holder (holder.Self), learned once: holder.Self
// asks the system for the process id at every call, a system call per
// acquisition.
var self = sync.OnceValue(func() backend.Holder { return holder.Self("", time.Time{}) })

// recordBuf is room enough for most records (see appendRecord), for a
// buffer on the caller's stack: a record of a longer owner text grows it
// on the heap.
const recordBuf = 512

// appendRecord appends to dst (empty) the record of this process holding
// a lock since since, described as owner: counterLen bytes left for the
// fencing counter (written with it in one write; see bumpCounter), then
// the record and a newline. The stored form of the last owner recorded is
// kept (see recordHead): a record of the same owner then costs appending
// its since, no encoding and no allocation.
func appendRecord(dst []byte, owner string, since time.Time) []byte {
	h := lastHead.Load()
	if h == nil || h.owner != owner {
		h = makeHead(owner)
		lastHead.Store(h)
	}
	ns := since.UnixNano()
	if h.head == nil || ns < 0 {
		return appendEncoded(dst, owner, since)
	}
	dst = append(dst, h.head...)
	dst = append(dst, sinceKey...)
	dst = strconv.AppendInt(dst, ns, 10)
	return append(dst, '}', '\n')
}

// recordHead is what the records of this process for one owner begin
// with: counterLen bytes, then internal/holder's stored form up to its
// Since (the last field) — or head nil if the stored form turns out not
// to be that head followed by sinceKey, the time and '}': each record is
// then encoded whole.
type recordHead struct {
	owner string
	head  []byte
}

// lastHead is the head of the last owner recorded (most processes give
// one owner, or none, for all their locks).
var lastHead atomic.Pointer[recordHead]

// sinceKey is how the stored form puts Since after the other fields.
const sinceKey = `,"t":`

// makeHead encodes the head of owner's records, the owner text cut as
// the longest Since needs (see appendEncoded), and checks it against
// holder.Encode.
func makeHead(owner string) *recordHead {
	const longest = math.MaxInt64
	full := appendEncoded(nil, owner, time.Unix(0, longest))
	tail := sinceKey + strconv.FormatInt(longest, 10) + "}\n"
	if !bytes.HasSuffix(full, []byte(tail)) {
		return &recordHead{owner: owner}
	}
	return &recordHead{owner: owner, head: full[:len(full)-len(tail)]}
}

// appendEncoded is appendRecord encoding the whole record: an owner text
// whose escaped form would not fit maxRecord is cut.
func appendEncoded(dst []byte, owner string, since time.Time) []byte {
	h := self()
	h.Owner, h.Since = owner, since
	rec := holder.Encode(h)
	for len(rec) > maxRecord { // only an owner text of many escaped bytes
		h.Owner = h.Owner[:len(h.Owner)/2]
		rec = holder.Encode(h)
	}
	dst = append(dst, make([]byte, counterLen)...)
	dst = append(dst, rec...)
	return append(dst, '\n')
}

// writeRecord writes rec (made by appendRecord) into slot of the file open as
// h, without the counter's bytes.
func writeRecord(h handle, path string, slot int, rec []byte) error {
	b := rec[counterLen:]
	if n, err := writeAt(h, b, recordOffset(slot)); err != nil || n != len(b) {
		if err == nil {
			err = fmt.Errorf("short write")
		}
		return fmt.Errorf("write holder record of %s: %w", path, err)
	}
	return nil
}

// readRecord returns the holder recorded in slot of the file open as h: a
// zero Holder when the slot holds no readable record (a holder that has not
// written it yet, a corrupt one).
func readRecord(h handle, slot int) backend.Holder {
	buf := make([]byte, maxRecord+1)
	n, _ := readAt(h, buf, recordOffset(slot))
	i := bytes.IndexByte(buf[:max(n, 0)], '\n')
	if i < 0 {
		return backend.Holder{}
	}
	hd, err := holder.Decode(buf[:i])
	if err != nil {
		return backend.Holder{}
	}
	return hd
}

// DescribeSemaphore implements backend.SemaphoreDescriber: the holders of
// slots 0..limit-1 of the semaphore name, one per ticket (see
// describeExclusive).
func (b *Backend) DescribeSemaphore(ctx context.Context, name string, limit int) ([]backend.Holder, error) {
	if err := b.describeBegin(name); err != nil {
		return nil, err
	}
	if limit < 1 {
		return nil, backend.Permanent(fmt.Errorf("%w: %d", backend.ErrInvalidLimit, limit))
	}
	var hs []backend.Holder
	prefix := b.path(kindSemSlot, name)
	for i := range limit {
		var err error
		if hs, err = b.describeExclusive(slotName(prefix, i), hs); err != nil {
			return nil, err
		}
	}
	return hs, nil
}

// describeBegin checks the arguments of a Describe call (and those of an
// acquisition, see begin): a name, and a backend not closed.
func (b *Backend) describeBegin(name string) error {
	if name == "" {
		return backend.Permanent(fmt.Errorf("%w: empty name", backend.ErrInvalidName))
	}
	if b.done.Load() { // no mu: every acquisition begins here
		return backend.Permanent(ErrClosed)
	}
	return nil
}
