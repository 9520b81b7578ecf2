//go:build linux && dlock_portable

package fs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// networkFS names the network file system dir is on, or returns "".
func networkFS(dir string) (string, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(dir, &s); err != nil {
		return "", err
	}
	switch uint32(s.Type) {
	case unix.NFS_SUPER_MAGIC, unix.SMB_SUPER_MAGIC, unix.SMB2_SUPER_MAGIC, unix.CIFS_SUPER_MAGIC:
		return fmt.Sprintf("type %#x", s.Type), nil
	}
	return "", nil
}
