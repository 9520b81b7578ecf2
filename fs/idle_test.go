//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock/internal/holder"
)

// A file noted again since the previous tick (released again: in use) is
// not swept with its older note: it goes only after a tick without a
// release.
func TestIdleRotateSkipsRenoted(t *testing.T) {
	var s idleFiles
	s.note("busy", idleFile{})
	s.note("quiet", idleFile{})
	if old := s.rotate(); old != nil {
		t.Fatalf("first tick swept %v, want nothing (noted since)", old)
	}
	s.note("busy", idleFile{}) // released again before the next tick
	old := s.rotate()
	if _, ok := old["busy"]; ok || len(old) != 1 {
		t.Fatalf("second tick sweeps %v, want only quiet", old)
	}
	s.swept()
	if old := s.rotate(); len(old) != 1 || old["busy"] != (idleFile{}) {
		t.Fatalf("third tick sweeps %v, want busy (rested a tick)", old)
	}
}

// appendRecord's records (built from the owner's encoded head) are
// holder.Encode's, whatever the owner, and one longer than the stack
// buffer or than a slot still decodes (cut to fit).
func TestAppendRecordIsEncode(t *testing.T) {
	since := time.Unix(0, 1_700_000_000_123_456_789)
	for _, owner := range []string{"", "job-7", `quo"te\` + "\x00é", strings.Repeat("x", 600), strings.Repeat("\x01", holder.MaxOwner)} {
		for range 2 { // the head is made, then reused
			rec := appendRecord(nil, owner, since)
			if len(rec) < counterLen+2 || rec[len(rec)-1] != '\n' || !allZero(rec[:counterLen]) {
				t.Fatalf("owner %.20q: record %q has no counter room or newline", owner, rec)
			}
			body := rec[counterLen : len(rec)-1]
			if len(body) > maxRecord {
				t.Fatalf("owner %.20q: record of %d bytes exceeds %d", owner, len(body), maxRecord)
			}
			h, err := holder.Decode(body)
			if err != nil {
				t.Fatalf("owner %.20q: %v", owner, err)
			}
			if !h.Since.Equal(since) || !strings.HasPrefix(owner, h.Owner) || h.PID != self().PID {
				t.Fatalf("owner %.20q: decoded %+v", owner, h)
			}
			if len(owner) <= 600 {
				want := self()
				want.Owner, want.Since = owner, since
				if enc := holder.Encode(want); !bytes.Equal(body, enc) {
					t.Fatalf("owner %.20q: record %s, holder.Encode %s", owner, body, enc)
				}
			}
		}
	}
}

// A sweep that the monitor started is waited for by sweepIdle
// (TestNoLockFilesLeft once counted the files a sweep in flight had taken
// and not yet removed): sweepDone is nil with no sweep running, and a
// channel that swept closes while one runs.
func TestSweepDone(t *testing.T) {
	var s idleFiles
	if s.sweepDone() != nil {
		t.Fatal("a sweep to wait for, with none running")
	}
	s.note("a", idleFile{})
	s.rotate() // ages a
	if old := s.rotate(); len(old) != 1 {
		t.Fatalf("rotate started a sweep of %d files, want 1", len(old))
	}
	done := s.sweepDone()
	if done == nil || s.sweepDone() != done {
		t.Fatal("no single channel for the sweep running")
	}
	select {
	case <-done:
		t.Fatal("done before the sweep ended")
	default:
	}
	s.swept()
	select {
	case <-done:
	default:
		t.Fatal("not done after the sweep ended")
	}
	if s.sweepDone() != nil {
		t.Fatal("a sweep to wait for after it ended")
	}
}
