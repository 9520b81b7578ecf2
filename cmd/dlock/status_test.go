//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock"
)

// TestStatusHolders checks that status names the holder that dlock run
// recorded — its pid, this host, the -owner text — in text and in JSON,
// without taking the lock, on every backend; and that -shared and
// -semaphore N judge held by the holders in their way.
func TestStatusHolders(t *testing.T) {
	forEachBackend(t, func(t *testing.T, tg target) {
		name := lockName(t)
		owner := "deploy job 4411\nforged line"
		h := startHolder(t, tg, name, "", "-owner", owner)
		pid := h.cmd.Process.Pid
		code, out, stderr := runDlock(t, tg, "status", name)
		if code != exitNotAcquired || !strings.HasPrefix(out, "held\n") {
			t.Fatalf("status of a held lock: exit %d, %q; stderr %s", code, out, stderr)
		}
		code, js, stderr := runDlock(t, tg, "status", "-json", name)
		var got statusJSON
		if err := json.Unmarshal([]byte(js), &got); err != nil || code != exitNotAcquired {
			t.Fatalf("status -json: exit %d, %q (%v); stderr %s", code, js, err, stderr)
		}
		want := fmt.Sprintf("holder: pid %d on ", pid)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "  "+want) || !strings.HasSuffix(lines[1], fmt.Sprintf("owner %q", owner)) {
			t.Fatalf("status of a held lock:\n%s\nwant one line starting %q and ending with the quoted owner", out, want)
		}
		if !got.Held || got.Name != name || len(got.Holders) != 1 || got.Holders[0].PID != pid ||
			got.Holders[0].Owner != owner || got.Holders[0].Shared || got.Holders[0].Since == nil ||
			time.Since(*got.Holders[0].Since) > time.Minute {
			t.Fatalf("status -json: %s", js)
		}
		redlock := strings.HasPrefix(tg.url, "redlock") // a mutex only
		if code, out, _ := runDlock(t, tg, "status", "-shared", name); !redlock && code != exitNotAcquired {
			t.Errorf("status -shared with a writer holding: exit %d, %q", code, out)
		}
		if code := h.stop(t); code != 0 {
			t.Fatalf("holder exit %d: %s", code, h.stderr)
		}
		code, js, _ = runDlock(t, tg, "status", "-json", name)
		got = statusJSON{}
		if err := json.Unmarshal([]byte(js), &got); err != nil || code != 0 || got.Held || got.Holders == nil || len(got.Holders) != 0 {
			t.Fatalf("status -json of a free lock: exit %d, %s; want held false and holders [] (recorded, none)", code, js)
		}
		if redlock {
			return
		}
		r := startHolder(t, tg, name, "", "-shared")
		if code, out, _ := runDlock(t, tg, "status", "-shared", name); code != 0 || !strings.HasPrefix(out, "free\n  reader: ") {
			t.Errorf("status -shared with a reader holding: exit %d, %q", code, out)
		}
		if code, out, _ := runDlock(t, tg, "status", name); code != exitNotAcquired || !strings.HasPrefix(out, "held\n  reader: ") {
			t.Errorf("status with a reader holding: exit %d, %q", code, out)
		}
		r.stop(t)
		sem := name + "-sem"
		s1 := startHolder(t, tg, sem, "", "-semaphore", "2")
		if code, out, _ := runDlock(t, tg, "status", "-semaphore", "2", sem); code != 0 || strings.Count(out, "holder: ") != 1 {
			t.Errorf("status -semaphore 2 with one ticket held: exit %d, %q", code, out)
		}
		s2 := startHolder(t, tg, sem, "", "-semaphore", "2")
		if code, out, _ := runDlock(t, tg, "status", "-semaphore", "2", sem); code != exitNotAcquired || strings.Count(out, "holder: ") != 2 {
			t.Errorf("status -semaphore 2 with both tickets held: exit %d, %q", code, out)
		}
		s1.stop(t)
		s2.stop(t)
	})
}

func TestDescribeHolder(t *testing.T) {
	since := time.Date(2026, 12, 3, 2, 10, 0, 0, time.UTC)
	for _, c := range []struct {
		h    dlock.Holder
		want string
	}{
		{dlock.Holder{Host: "build-3", PID: 4411, ProcessStart: since.Add(-time.Hour), Owner: "deploy", Since: since},
			`holder: pid 4411 on build-3 (started 2026-12-03T01:10:00Z), since 2026-12-03T02:10:00Z (5m3s), owner "deploy"`},
		{dlock.Holder{PID: 7, Shared: true}, "reader: pid 7"},
		{dlock.Holder{}, "holder: unknown process"},
		{dlock.Holder{Host: "evil\nhost", Owner: "a\nb"}, `holder: on "evil\nhost", owner "a\nb"`},
	} {
		if got := describeHolder(c.h, since.Add(5*time.Minute+3*time.Second)); got != c.want {
			t.Errorf("describeHolder(%+v) =\n%s\nwant\n%s", c.h, got, c.want)
		}
	}
}

// TestVerboseTellsEvents checks that -verbose reports the library's
// Observer events: the acquisition (kind, wait, attempts) and the release.
func TestVerboseTellsEvents(t *testing.T) {
	tg := target{url: "file://" + t.TempDir()}
	name := lockName(t)
	code, _, stderr := runDlock(t, tg, "run", "-verbose", name, "--", "true")
	if code != 0 || !strings.Contains(stderr, fmt.Sprintf("dlock: acquired lock %q (rwmutex write) after ", name)) ||
		!strings.Contains(stderr, "1 attempt") || !strings.Contains(stderr, fmt.Sprintf("dlock: released lock %q after holding it ", name)) {
		t.Fatalf("run -verbose: exit %d, stderr:\n%s", code, stderr)
	}
	if code, _, stderr := runDlock(t, tg, "run", name, "--", "true"); code != 0 || stderr != "" {
		t.Fatalf("run without -verbose: exit %d, stderr %q, want silence", code, stderr)
	}
}
