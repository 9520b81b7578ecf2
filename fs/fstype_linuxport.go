//go:build linux && dlock_portable

package fs

import "golang.org/x/sys/unix"

// networkFS names the network file system dir is on, or returns "".
func networkFS(dir string) (string, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(dir, &s); err != nil {
		return "", err
	}
	return networkType(s.Type), nil
}
