//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

// maxIdle bounds the lock files noted for removal: past it, a release
// removes its file at once.
const maxIdle = 1 << 16

// idleFiles is the lock files a Backend let go of and has not removed yet,
// in two generations: noted since the monitor's last tick (cur), and
// before it (old). Each tick sweeps old and ages cur, so a file goes 1 to
// 2 ticks after its release if nobody holds or waits for it then (see the
// package documentation, Lock-file lifecycle). Both implementations keep
// one under their Backend's mu; their idleFile says how to remove a file
// (their removeNoted).
type idleFiles struct {
	cur, old map[string]idleFile
	sweeping bool          // a sweep of an older generation runs
	sweptc   chan struct{} // closed when it ends; made by the first sweepIdle that waits for it
}

// note records file; it reports false when maxIdle files are noted
// already (the caller then removes the file at once).
func (s *idleFiles) note(file string, v idleFile) bool {
	if len(s.cur) >= maxIdle {
		return false
	}
	if s.cur == nil {
		s.cur = make(map[string]idleFile)
	}
	s.cur[file] = v
	return true
}

// rotate runs at each tick: it returns the files noted before the previous
// tick and not since, to sweep now (nil if none; otherwise sweeping is set until the
// caller calls swept), and ages those noted since. While a sweep runs the
// generations wait.
func (s *idleFiles) rotate() map[string]idleFile {
	if s.sweeping {
		return nil
	}
	old := s.old
	s.old, s.cur = s.cur, nil
	// A file noted again since (released again: in use) is not idle: it
	// ages with its latest note. Sweeping it anyway would remove the file
	// of a name locked over and over between two of its uses, which the
	// next acquisition then finds busy or gone (a wait, a new file).
	for file := range old {
		if _, again := s.old[file]; again {
			delete(old, file)
		}
	}
	if len(old) == 0 {
		return nil
	}
	s.sweeping = true
	return old
}

// swept ends the sweep rotate started.
func (s *idleFiles) swept() {
	s.sweeping = false
	if s.sweptc != nil {
		close(s.sweptc)
		s.sweptc = nil
	}
}

// sweepDone returns a channel closed when the sweep running now ends, or
// nil if none runs.
func (s *idleFiles) sweepDone() <-chan struct{} {
	if !s.sweeping {
		return nil
	}
	if s.sweptc == nil {
		s.sweptc = make(chan struct{})
	}
	return s.sweptc
}

// takeAll returns every noted file and forgets them (Close, tests).
func (s *idleFiles) takeAll() [2]map[string]idleFile {
	all := [2]map[string]idleFile{s.old, s.cur}
	s.old, s.cur = nil, nil
	return all
}

// pending reports whether files wait for removal (the monitor keeps
// running while they do).
func (s *idleFiles) pending() bool {
	return len(s.cur) > 0 || len(s.old) > 0 || s.sweeping
}

// sweepIdle removes every noted lock file that is idle now (Close, tests),
// and waits for a sweep the monitor started to end: when it returns, no
// file noted before it was called waits for removal.
func (b *Backend) sweepIdle() {
	b.mu.Lock()
	all := b.idle.takeAll()
	running := b.idle.sweepDone()
	b.mu.Unlock()
	for _, m := range all {
		for file, k := range m {
			b.removeNoted(file, k)
		}
	}
	if running != nil {
		<-running
	}
}

// rotateIdleLocked runs at each monitor tick: it starts a sweep (in a
// goroutine that Close waits for) of the files noted before the previous
// tick, and ages those noted since. b.mu is held.
func (b *Backend) rotateIdleLocked() {
	if old := b.idle.rotate(); old != nil {
		b.wg.Add(1)
		go b.sweep(old)
	}
}

// sweep removes the files of old that are idle, then lets the next sweep
// start.
func (b *Backend) sweep(old map[string]idleFile) {
	defer b.wg.Done()
	for file, k := range old {
		b.removeNoted(file, k)
	}
	b.mu.Lock()
	b.idle.swept()
	b.mu.Unlock()
}
