//go:build linux

package fs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/dlock-go/dlock/backend"
)

// The two Linux implementations never share a directory: New marks the
// directory with its own marker and refuses one that has the other's
// (whose holders would not exclude its own: flock and OFD locks do not see
// each other).
func TestOtherImplementationRefused(t *testing.T) {
	dir := t.TempDir()
	b, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	own, other := markerLinux, markerPortable
	if _, err := os.Lstat(filepath.Join(dir, markerPortable)); err == nil {
		own, other = other, own
	}
	if _, err := os.Lstat(filepath.Join(dir, own)); err != nil {
		t.Fatalf("New left no marker: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, other)); err == nil {
		t.Fatalf("New wrote both markers")
	}
	// Again: a directory of our own stays usable.
	b, err = New(dir)
	if err != nil {
		t.Fatalf("New of a directory with our own marker: %v", err)
	}
	b.Close()

	mixed := t.TempDir()
	if err := os.WriteFile(filepath.Join(mixed, other), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err = New(mixed)
	if err == nil {
		b.Close()
		t.Fatalf("New of a directory marked %s by the other implementation: no error", other)
	}
	if !errors.Is(err, ErrOtherImplementation) || !errors.Is(err, backend.ErrInvalidOption) {
		t.Fatalf("New of a directory marked %s: %v; want ErrOtherImplementation and backend.ErrInvalidOption", other, err)
	}
	t.Log(err)
}
