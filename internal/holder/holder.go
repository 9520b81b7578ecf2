// Package holder records who holds a lock: this process's identity, and
// the compact form in which a backend stores it beside a lock (in a lock
// file, with a lease's key).
package holder

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// MaxOwner is the longest owner text a holder may give, in bytes.
const MaxOwner = 1024

// started approximates when this process started: package initialisation
// runs before main, a moment after the exec.
var started = time.Now()

var host = sync.OnceValue(func() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
})

// Self returns this process as the holder of a lock taken now by a caller
// that describes itself as owner.
func Self(owner string, since time.Time) backend.Holder {
	return backend.Holder{Host: host(), PID: os.Getpid(), ProcessStart: started, Owner: owner, Since: since}
}

// record is the stored form: short keys, times in Unix nanoseconds.
type record struct {
	Host  string `json:"h,omitempty"`
	PID   int    `json:"p,omitempty"`
	Start int64  `json:"st,omitempty"`
	Owner string `json:"o,omitempty"`
	Since int64  `json:"t,omitempty"`
}

// Encode returns h's stored form, a JSON object of at most about
// MaxOwner + 400 bytes (Shared is not stored: a backend knows it from where
// it keeps the record).
func Encode(h backend.Holder) []byte {
	r := record{Host: h.Host, PID: h.PID, Owner: h.Owner}
	if !h.ProcessStart.IsZero() {
		r.Start = h.ProcessStart.UnixNano()
	}
	if !h.Since.IsZero() {
		r.Since = h.Since.UnixNano()
	}
	b, _ := json.Marshal(r) // strings and integers only: cannot fail
	return b
}

// errCorrupt reports a stored record that does not decode.
var errCorrupt = errors.New("holder record is not valid")

// Decode parses a stored form made by Encode. Whatever the bytes, it
// returns an error rather than panicking, and never a holder with an owner
// longer than MaxOwner.
func Decode(b []byte) (backend.Holder, error) {
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return backend.Holder{}, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	if len(r.Owner) > MaxOwner || len(r.Host) > 255 || r.PID < 0 {
		return backend.Holder{}, fmt.Errorf("%w: out of range", errCorrupt)
	}
	h := backend.Holder{Host: r.Host, PID: r.PID, Owner: r.Owner}
	if r.Start != 0 {
		h.ProcessStart = time.Unix(0, r.Start)
	}
	if r.Since != 0 {
		h.Since = time.Unix(0, r.Since)
	}
	return h, nil
}
