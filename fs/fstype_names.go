//go:build darwin || freebsd || dragonfly || openbsd || netbsd

package fs

import "bytes"

// netName returns the file-system type name in b (NUL-terminated) if it
// is a network file system, where flock is emulated or not shared between
// machines, else "".
func netName(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	switch name := string(b); name {
	case "nfs", "nfs4", "smbfs", "cifs", "afpfs", "webdav", "ncpfs":
		return name
	}
	return ""
}
