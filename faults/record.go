package faults

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
)

// Kinds of critical section.
const (
	KindExclusive = "x" // a mutex, or the write side of an RWMutex
	KindShared    = "r" // the read side of an RWMutex
	KindTicket    = "s" // a semaphore ticket
)

// Record is one line of a worker's history file. A critical section writes
// an "enter" record as soon as it is entered, a "leave" record just before
// it calls Release, and an "exit" record when it is over, so a worker
// killed in between leaves a section with an unknown end, which the
// checker bounds by the worker's kill (or its leave record) and death.
type Record struct {
	Ev    string `json:"ev"`   // "enter", "leave" or "exit"
	Proc  int    `json:"proc"` // worker process (a respawned worker gets a new number)
	G     int    `json:"g"`    // goroutine in the process
	Seq   int    `json:"seq"`  // section number in the goroutine
	Kind  string `json:"kind"` // KindExclusive, KindShared or KindTicket
	Call  int64  `json:"call"` // acquisition started (Now)
	Enter int64  `json:"enter"`
	Token uint64 `json:"token,omitempty"`

	// leave and exit
	Leave int64 `json:"leave,omitempty"` // section's work done, Release about to be called

	// exit only
	Rel      int64  `json:"rel,omitempty"`      // Release returned
	Told     int64  `json:"told,omitempty"`     // holder learnt of the loss (Lost closed, or Release said ErrLockLost)
	Lost     bool   `json:"lost,omitempty"`     // the holder was told its lock was lost
	RelErr   string `json:"relErr,omitempty"`   // Release's error, if any
	Wrote    bool   `json:"wrote,omitempty"`    // the resource accepted the section's write
	Rejected bool   `json:"rejected,omitempty"` // the resource refused a stale token
	Skipped  bool   `json:"skipped,omitempty"`  // the holder skipped its write: it knew it had lost the lock
	Torn     bool   `json:"torn,omitempty"`     // a reader saw the value change under it
}

// Recorder appends records to a file, one JSON line per write(2), so that a
// record survives the SIGKILL of its process once Write returned.
type Recorder struct {
	mu sync.Mutex
	f  *os.File
}

// NewRecorder opens (creating) the history file at path for appending.
func NewRecorder(path string) (*Recorder, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("faults: history file: %w", err)
	}
	return &Recorder{f: f}, nil
}

// Write appends r.
func (w *Recorder) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err = w.f.Write(b)
	return err
}

// Close closes the file.
func (w *Recorder) Close() error { return w.f.Close() }

// Section is a critical section merged from its records.
type Section struct {
	Record      // the enter record's fields, completed by the exit record's
	Done   bool // an exit record was found
}

// ReadRecords reads history files and merges their records into sections,
// sorted by entry time. A torn last line (a worker killed mid-write) is
// ignored.
func ReadRecords(paths ...string) ([]Section, error) {
	type key struct{ proc, g, seq int }
	byKey := map[key]*Section{}
	var order []key
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		r := bufio.NewReader(f)
		for {
			line, err := r.ReadBytes('\n')
			if err == io.EOF {
				break // a partial last line, if any, is dropped
			}
			if err != nil {
				f.Close()
				return nil, err
			}
			var rec Record
			if err := json.Unmarshal(line, &rec); err != nil {
				f.Close()
				return nil, fmt.Errorf("faults: %s: %w", p, err)
			}
			k := key{rec.Proc, rec.G, rec.Seq}
			s := byKey[k]
			if s == nil {
				s = &Section{}
				byKey[k] = s
				order = append(order, k)
			}
			switch rec.Ev {
			case "enter":
				done := s.Done
				exit := s.Record
				s.Record = rec
				if done { // exit seen first: keep its fields
					mergeExit(&s.Record, exit)
				}
			case "leave":
				if s.Ev == "" {
					s.Record = rec
				} else if !s.Done {
					s.Leave = rec.Leave
				}
			case "exit":
				if s.Ev == "" { // no enter yet
					s.Record = rec
				} else {
					mergeExit(&s.Record, rec)
				}
				s.Done = true
			}
		}
		f.Close()
	}
	out := make([]Section, 0, len(order))
	for _, k := range order {
		s := byKey[k]
		if s.Enter == 0 {
			continue // an exit without its enter: cannot happen, ignore
		}
		s.Ev = "section"
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Enter < out[j].Enter })
	return out, nil
}

func mergeExit(dst *Record, e Record) {
	dst.Leave, dst.Rel, dst.Told, dst.Lost, dst.RelErr = e.Leave, e.Rel, e.Told, e.Lost, e.RelErr
	dst.Wrote, dst.Rejected, dst.Skipped, dst.Torn = e.Wrote, e.Rejected, e.Skipped, e.Torn
	if dst.Enter == 0 {
		dst.Call, dst.Enter, dst.Token, dst.Kind = e.Call, e.Enter, e.Token, e.Kind
	}
}
