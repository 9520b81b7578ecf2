//go:build netbsd

package fs

import "golang.org/x/sys/unix"

// networkFS names the network file system dir is on, or returns "".
func networkFS(dir string) (string, error) {
	var s unix.Statvfs_t
	if err := unix.Statvfs(dir, &s); err != nil {
		return "", err
	}
	return netName(s.Fstypename[:]), nil
}
