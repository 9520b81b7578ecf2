//go:build darwin || freebsd || openbsd || netbsd || dragonfly || windows

package fs

// claimDir does nothing: only Linux has two implementations (see
// ErrOtherImplementation).
func claimDir(dir string, portable bool) error { return nil }
