//go:build linux && !dlock_portable

package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dlock-go/dlock/backend"
)

// pids returns the process ids of hs, and how many of them are readers.
func pids(hs []backend.Holder) (out []int, shared int) {
	for _, h := range hs {
		out = append(out, h.PID)
		if h.Shared {
			shared++
		}
	}
	return out, shared
}

// A holder killed by SIGKILL leaves its record in the file, but Holders
// never lists it: its mark went with it. The next reader reuses the slot.
func TestHoldersKilled(t *testing.T) {
	dir := t.TempDir()
	b := newBackend(t, dir)
	for _, kind := range []string{"mutex", "read", "write", "semaphore"} {
		t.Run(kind, func(t *testing.T) {
			describe := func() []backend.Holder {
				t.Helper()
				var hs []backend.Holder
				var err error
				switch kind {
				case "mutex":
					hs, err = b.DescribeLock(bg(), "k")
				case "semaphore":
					hs, err = b.DescribeSemaphore(bg(), "k", 1)
				default:
					hs, err = b.DescribeRW(bg(), "k")
				}
				if err != nil {
					t.Fatal(err)
				}
				return hs
			}
			h, _ := startHelper(t, dir, kind, "k")
			pid := h.cmd.Process.Pid
			got, shared := pids(describe())
			if len(got) != 1 || got[0] != pid || shared != map[bool]int{true: 1}[kind == "read"] {
				t.Fatalf("holders %v (%d readers) while helper %d holds a %s", got, shared, pid, kind)
			}
			file := map[string]string{"mutex": "m-k", "semaphore": "s-k+0"}[kind]
			if file == "" {
				file = "r-k"
			}
			h.kill()
			raw, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(raw, []byte(`"p":`+strconv.Itoa(pid))) {
				t.Fatalf("the killed helper's record is not in %s", file)
			}
			if hs := describe(); len(hs) != 0 {
				t.Fatalf("holders %+v after the holder was killed, want none", hs)
			}
			if kind == "read" {
				l := mustTry(t)(b.TryRLock(bg(), "k"))
				if l.slot != 1 {
					t.Fatalf("a new reader took slot %d, want the dead one's (1)", l.slot)
				}
				if got, _ := pids(describe()); len(got) != 1 || got[0] != os.Getpid() {
					t.Fatalf("holders %v, want this process only", got)
				}
				mustRelease(t, l)
			}
		})
	}
}

// Many readers each have a slot; a released reader's slot is reused; a
// slot being claimed (its mark write-locked: the record not written yet)
// is not listed.
func TestHoldersReaderSlots(t *testing.T) {
	b := newBackend(t, "")
	var ls []*Lease
	for range 5 {
		ls = append(ls, mustTry(t)(b.TryRLock(bg(), "n")))
	}
	for i, l := range ls {
		if l.slot != i+1 {
			t.Fatalf("reader %d has slot %d", i, l.slot)
		}
	}
	hs, err := b.DescribeRW(bg(), "n")
	if got, shared := pids(hs); err != nil || len(got) != 5 || shared != 5 {
		t.Fatalf("holders %+v, %v: want 5 readers", hs, err)
	}
	mustRelease(t, ls[2])
	if l := mustTry(t)(b.TryRLock(bg(), "n")); l.slot != 3 {
		t.Fatalf("a new reader took slot %d, want the freed 3", l.slot)
	} else {
		ls[2] = l
	}
	// A reader in the middle of its claim.
	fd, err := unix.Open(ls[0].Path(), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if ok, err := setMark(fd, 6, unix.F_WRLCK); !ok || err != nil {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if hs, _ := b.DescribeRW(bg(), "n"); len(hs) != 5 {
		t.Fatalf("holders %+v: a slot being claimed was listed", hs)
	}
	for _, l := range ls {
		mustRelease(t, l)
	}
	if hs, _ := b.DescribeRW(bg(), "n"); len(hs) != 0 {
		t.Fatalf("holders %+v after every release", hs)
	}
}

// Records and the fencing counter share the file: a record written with
// fencing off leaves zeros where the counter goes, which count as 0; the
// counter written after keeps the record readable.
func TestHoldersWithoutFencing(t *testing.T) {
	dir := t.TempDir()
	off := newBackend(t, dir, WithFencing(false))
	on := newBackend(t, dir)
	l := mustTry(t)(off.TryLock(backend.ContextWithOwner(bg(), "no token"), "f"))
	hs, err := on.DescribeLock(bg(), "f")
	if err != nil || len(hs) != 1 || hs[0].Owner != "no token" {
		t.Fatalf("holders %+v, %v", hs, err)
	}
	mustRelease(t, l)
	l = mustTry(t)(on.TryLock(backend.ContextWithOwner(bg(), "token"), "f"))
	if l.Token() == 0 {
		t.Fatal("no token")
	}
	hs, err = off.DescribeLock(bg(), "f")
	if err != nil || len(hs) != 1 || hs[0].Owner != "token" {
		t.Fatalf("holders %+v, %v", hs, err)
	}
	mustRelease(t, l)
	raw, _ := os.ReadFile(l.Path())
	if _, ok := parseCounter(raw[:counterLen]); !ok {
		t.Fatalf("counter %q", raw[:counterLen])
	}
}

// An owner text that escapes to more than a slot is cut to fit, and bad
// input gets a clear error.
func TestHoldersLongOwnerAndBadInput(t *testing.T) {
	b := newBackend(t, "")
	owner := string(bytes.Repeat([]byte("<"), 1024)) // 6 bytes each escaped
	l := mustTry(t)(b.TryWLock(backend.ContextWithOwner(bg(), owner), "w"))
	hs, err := b.DescribeRW(bg(), "w")
	if err != nil || len(hs) != 1 || hs[0].Shared || hs[0].PID != os.Getpid() {
		t.Fatalf("holders %+v, %v", hs, err)
	}
	mustRelease(t, l)
	if _, err := b.DescribeLock(bg(), ""); err == nil {
		t.Fatal("empty name accepted")
	}
	if _, err := b.DescribeSemaphore(bg(), "s", 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(b.Dir(), "m-link")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.DescribeLock(bg(), "link"); err == nil {
		t.Fatal("a symbolic link was followed")
	}
}
