package faults

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Resource is the shared resource outside the lock service that critical
// sections update with a deliberately slow read-modify-write: a counter in
// a file, each access atomic under a brief flock of the file (like one
// statement of a database), the read and the write of one update separated
// by the caller's pause. Two holders that overlap lose an update: both read
// v and both write v+1.
//
// It also plays the part of a fenced store: it remembers the largest token
// it was shown (by a read or a write). With enforcement on, an access with
// a smaller token is refused, as a fenced store refuses a holder whose lock
// has passed to another; with it off, the access goes through and is only
// counted as stale.
type Resource struct {
	path    string
	enforce bool
}

// ResourceState is the content of a Resource's file.
type ResourceState struct {
	Value    int64  // the counter
	MaxToken uint64 // the largest token seen
	Writes   int64  // writes accepted
	Lost     int64  // accepted writes that overwrote an update they had not read
	Stale    int64  // accesses with a token below MaxToken (refused if enforcing)
	Refused  int64  // accesses refused (enforcement on)
}

// NewResource returns the resource kept in the file at path (created empty
// by the first access). enforce turns fencing enforcement on.
func NewResource(path string, enforce bool) *Resource {
	return &Resource{path: path, enforce: enforce}
}

// ErrStale is returned for an access refused because its token is below
// the largest one the resource has seen.
var ErrStale = errors.New("faults: stale fencing token refused")

// Read returns the counter. A token of 0 reads without fencing.
func (r *Resource) Read(token uint64) (int64, error) {
	var v int64
	err := r.update(func(s *ResourceState) error {
		if token != 0 {
			if err := r.fence(s, token); err != nil {
				return err
			}
		}
		v = s.Value
		return nil
	})
	return v, err
}

// Write stores v, which its caller computed as the value it read plus one:
// when the counter no longer holds v-1, an update was lost.
func (r *Resource) Write(token uint64, v int64) error {
	return r.update(func(s *ResourceState) error {
		if token != 0 {
			if err := r.fence(s, token); err != nil {
				return err
			}
		}
		if s.Value != v-1 {
			s.Lost++
		}
		s.Value = v
		s.Writes++
		return nil
	})
}

func (r *Resource) fence(s *ResourceState, token uint64) error {
	if token < s.MaxToken {
		s.Stale++
		if r.enforce {
			s.Refused++
			return ErrStale
		}
		return nil
	}
	s.MaxToken = token
	return nil
}

// State returns the resource's current state.
func (r *Resource) State() (ResourceState, error) {
	var st ResourceState
	err := r.update(func(s *ResourceState) error { st = *s; return nil })
	return st, err
}

// update runs fn on the state under an exclusive flock of the file and
// stores the state even when fn fails (its counters changed).
func (r *Resource) update(fn func(*ResourceState) error) error {
	fd, err := unix.Open(r.path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("faults: resource: %w", err)
	}
	defer unix.Close(fd)
	for {
		err = unix.Flock(fd, unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("faults: resource: flock: %w", err)
	}
	buf := make([]byte, 256)
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("faults: resource: read: %w", err)
	}
	var s ResourceState
	if n > 0 {
		if err := parseState(string(buf[:n]), &s); err != nil {
			return err
		}
	}
	ferr := fn(&s)
	out := fmt.Sprintf("%d %d %d %d %d %d\n", s.Value, s.MaxToken, s.Writes, s.Lost, s.Stale, s.Refused)
	if _, err := unix.Pwrite(fd, []byte(out), 0); err != nil {
		return fmt.Errorf("faults: resource: write: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(len(out))); err != nil {
		return fmt.Errorf("faults: resource: truncate: %w", err)
	}
	return ferr
}

func parseState(text string, s *ResourceState) error {
	f := strings.Fields(text)
	if len(f) != 6 {
		return fmt.Errorf("faults: resource: corrupt state %q", text)
	}
	var err error
	num := func(i int) int64 {
		v, e := strconv.ParseInt(f[i], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("faults: resource: corrupt state %q", text)
		}
		return v
	}
	s.Value = num(0)
	s.MaxToken = uint64(num(1))
	s.Writes, s.Lost, s.Stale, s.Refused = num(2), num(3), num(4), num(5)
	return err
}

// Store is what a writer updates: the fenced counter, and beside it a
// shadow counter that enforces nothing. The same read-modify-writes go to
// both, so the shadow's lost updates are what a user without fencing
// would have lost, and the fenced counter's (which must be none) what a
// user with fencing loses.
type Store struct {
	Fenced, Shadow *Resource
}

// NewStore returns the store kept in the files fenced and shadow.
func NewStore(fenced, shadow string) Store {
	return Store{Fenced: NewResource(fenced, true), Shadow: NewResource(shadow, false)}
}

// Update is a read-modify-write of a Store in progress: both counters
// read, the writes still to come.
type Update struct {
	st      Store
	token   uint64
	fv, sv  int64
	Refused bool // the fenced counter refused the read: its write will not be tried
}

// Read begins an update with token: it reads both counters.
func (st Store) Read(token uint64) (*Update, error) {
	u := &Update{st: st, token: token}
	var err error
	if u.sv, err = st.Shadow.Read(token); err != nil {
		return nil, err
	}
	switch u.fv, err = st.Fenced.Read(token); {
	case errors.Is(err, ErrStale):
		u.Refused = true
	case err != nil:
		return nil, err
	}
	return u, nil
}

// Write ends the update: it writes the value read plus one to both
// counters (to the fenced one only if its read was not refused). wrote says
// the fenced counter took the write.
func (u *Update) Write() (wrote bool, err error) {
	if !u.Refused {
		switch err := u.st.Fenced.Write(u.token, u.fv+1); {
		case errors.Is(err, ErrStale):
			u.Refused = true
		case err != nil:
			return false, err
		default:
			wrote = true
		}
	}
	return wrote, u.st.Shadow.Write(u.token, u.sv+1)
}
