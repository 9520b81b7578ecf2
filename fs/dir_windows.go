//go:build windows

package fs

import (
	"fmt"
	"os"

	"github.com/dlock-go/dlock/backend"
)

// prepareDir creates the lock directory dir (absolute, clean) if needed and
// checks it. Windows offers a weaker promise than Unix (see the package
// documentation): the directory must be a directory and not a reparse
// point (symbolic link, junction); its ACL, its owner and those of its
// parents are not checked, nor are lock files' owners. Keep the directory
// where only you may write (under %LOCALAPPDATA%, whose default ACL grants
// only you, SYSTEM and Administrators).
func prepareDir(dir string, cfg *config) (string, trust, error) {
	if cfg.sharedGroup {
		return "", trust{}, fmt.Errorf("fs: %w: WithSharedGroup is not supported on Windows (no Unix groups): share a directory through its ACL", backend.ErrInvalidOption)
	}
	if err := os.MkdirAll(dir, cfg.dirMode.Perm()); err != nil {
		return "", trust{}, fmt.Errorf("fs: create lock directory %q: %w", dir, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", trust{}, fmt.Errorf("fs: stat lock directory %q: %w", dir, err)
	}
	if !fi.IsDir() || fi.Mode()&(os.ModeSymlink|os.ModeIrregular) != 0 {
		return "", trust{}, fmt.Errorf("fs: lock directory %q is not a plain directory (mode %v; a symbolic link or junction is refused): refused", dir, fi.Mode())
	}
	return dir, trust{}, nil
}
