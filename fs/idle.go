//go:build linux || darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

// maxIdle bounds the lock files noted for removal: past it, a release
// removes its file at once.
const maxIdle = 1 << 16

// idleFiles is the lock files a Backend let go of and has not removed yet,
// in two generations: noted since the monitor's last tick (cur), and
// before it (old). Each tick sweeps old and ages cur, so a file goes 1 to
// 2 ticks after its release, unless it is locked again meanwhile (see the
// package documentation, Lock-file lifecycle). Both implementations keep
// one under their Backend's mu; V says how to remove a file.
type idleFiles[V any] struct {
	cur, old map[string]V
	sweeping bool // a sweep of an older generation runs
}

// note records file; it reports false when maxIdle files are noted
// already (the caller then removes the file at once).
func (s *idleFiles[V]) note(file string, v V) bool {
	if len(s.cur) >= maxIdle {
		return false
	}
	if s.cur == nil {
		s.cur = make(map[string]V)
	}
	s.cur[file] = v
	return true
}

// rotate runs at each tick: it returns the files noted before the previous
// tick, to sweep now (nil if none; otherwise sweeping is set until the
// caller calls swept), and ages those noted since. While a sweep runs the
// generations wait.
func (s *idleFiles[V]) rotate() map[string]V {
	if s.sweeping {
		return nil
	}
	old := s.old
	s.old, s.cur = s.cur, nil
	if len(old) == 0 {
		return nil
	}
	s.sweeping = true
	return old
}

// swept ends the sweep rotate started.
func (s *idleFiles[V]) swept() { s.sweeping = false }

// takeAll returns every noted file and forgets them (Close, tests).
func (s *idleFiles[V]) takeAll() [2]map[string]V {
	all := [2]map[string]V{s.old, s.cur}
	s.old, s.cur = nil, nil
	return all
}

// pending reports whether files wait for removal (the monitor keeps
// running while they do).
func (s *idleFiles[V]) pending() bool {
	return len(s.cur) > 0 || len(s.old) > 0 || s.sweeping
}
