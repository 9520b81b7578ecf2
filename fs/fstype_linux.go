//go:build linux

package fs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// networkType names the network file system of statfs type t (NFS,
// SMB/CIFS, where flock is emulated with per-process locks), or returns "".
func networkType(t int64) string {
	switch uint32(t) {
	case unix.NFS_SUPER_MAGIC, unix.SMB_SUPER_MAGIC, unix.SMB2_SUPER_MAGIC, unix.CIFS_SUPER_MAGIC:
		return fmt.Sprintf("type %#x", t)
	}
	return ""
}
