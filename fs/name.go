package fs

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// kind is one namespace of lock files: each kind of lock, and each auxiliary
// file of a kind, has its own file-name prefix. No prefix is a prefix of
// another, so a file name decodes to exactly one (kind, name) pair.
type kind uint8

const (
	kindMutex      kind = iota // "m-" + E: a mutex; holds its fencing counter
	kindRW                     // "r-" + E: a reader-writer lock; holds its fencing counter
	kindRWGate                 // "rg-" + E: reserved (the writers' gate of an RW lock in earlier versions)
	kindRWCounter              // "rc-" + E: reserved (the RW counter lives in "r-" + E now)
	kindSemSlot                // "s-" + E + "+" + slot: one semaphore ticket
	kindSemCounter             // "sc-" + E: fencing counter of a semaphore
	kindMutexWait              // "mw-" + E: waiters of a mutex (portable implementation)
	kindSemWait                // "sw-" + E: waiters of a semaphore (portable implementation)
	kindRWHolder               // "rh-" + E + "+" + slot: a reader's holder record (portable implementation)
	kindUpgrade                // "u-" + E: held by the upgradeable reader of r- + E (portable implementation)
)

var kindPrefix = [...]string{
	kindMutex:      "m-",
	kindRW:         "r-",
	kindRWGate:     "rg-",
	kindRWCounter:  "rc-",
	kindSemSlot:    "s-",
	kindSemCounter: "sc-",
	kindMutexWait:  "mw-",
	kindSemWait:    "sw-",
	kindRWHolder:   "rh-",
	kindUpgrade:    "u-",
}

const (
	// maxEscaped is the longest escaped name used as is; longer ones are
	// hashed. With the longest kind prefix and a slot suffix a file name
	// stays well below the 255-byte limit of Linux file systems.
	maxEscaped = 200
	// hashedPrefix is how much of a long escaped name is kept, readable, in
	// front of its hash.
	hashedPrefix = 64
	// slotSep separates a semaphore's escaped name from its slot number.
	// Escaping never produces it.
	slotSep = '+'
	// hashSep separates the readable prefix of a long name from its hash.
	// Escaping never produces it.
	hashSep = '~'
)

// kept reports whether escape copies byte c unchanged (except '.' in first
// position, which is escaped so that no encoding is "." or "..").
func kept(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.'
}

const upperHex = "0123456789ABCDEF"

// encode maps a lock name to a string that is safe inside one file name:
// bytes in [A-Za-z0-9._-] are kept (a leading '.' is not), every other byte
// becomes %XX (upper-case hex, so '%' itself becomes %25). The mapping is
// injective and case-preserving. When the escaped form would exceed
// maxEscaped bytes, the result is its first bytes (at most hashedPrefix, cut
// between escapes), then '~', then the hex SHA-256 of the whole name; since
// escaping never yields '~', a hashed encoding never equals a plain one, and
// two hashed encodings are equal only if SHA-256 collides.
func encode(name string) string { return escape(name, false) }

// encodeFold is encode for a case-insensitive file system that also
// strips trailing dots (Windows): upper-case letters and a trailing '.'
// are escaped too. Kept letters are then all lower-case and hex digits
// all upper-case, so two encodings that differ only by case are equal:
// two names differing only by case never share a file.
func encodeFold(name string) string { return escape(name, true) }

// escape is encode (fold false) or encodeFold (fold true).
func escape(name string, fold bool) string {
	if plain(name, fold) {
		return name
	}
	var sb strings.Builder
	sb.Grow(min(len(name), maxEscaped) + 8)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if kept(c) && !(c == '.' && (i == 0 || fold && i == len(name)-1)) && !(fold && 'A' <= c && c <= 'Z') {
			sb.WriteByte(c)
		} else {
			sb.WriteByte('%')
			sb.WriteByte(upperHex[c>>4])
			sb.WriteByte(upperHex[c&0xF])
		}
		if sb.Len() > maxEscaped {
			return hashed(sb.String(), name)
		}
	}
	return sb.String()
}

// plain reports whether escape(name, fold) is name itself: short enough
// and made of kept bytes only, the first not a '.' (with fold: no
// upper-case letter, the last not a '.').
func plain(name string, fold bool) bool {
	if len(name) > maxEscaped || name != "" && name[0] == '.' {
		return false
	}
	if fold && name != "" && name[len(name)-1] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !kept(c) || fold && 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// hashed is the encoding of a name whose escaped form esc is too long.
func hashed(esc, name string) string {
	cut := min(len(esc), hashedPrefix)
	// Do not split a %XX escape: if one starts in the last two kept bytes,
	// cut before it.
	for i := cut - 1; i >= 0 && i >= cut-2; i-- {
		if esc[i] == '%' {
			cut = i
			break
		}
	}
	sum := sha256.Sum256([]byte(name))
	return esc[:cut] + string(hashSep) + hex.EncodeToString(sum[:])
}

// fileName is the name, inside the backend's directory, of the file of kind k
// for the lock name. For kindSemSlot it is the prefix shared by the slot
// files of name (kindRWHolder likewise); slotName appends the slot number.
func fileName(k kind, name string) string {
	s := kindPrefix[k] + encode(name)
	if k == kindSemSlot || k == kindRWHolder {
		s += string(slotSep)
	}
	return s
}

// fileNameFold is fileName for a file system that ignores case and strips
// trailing dots (Windows) when fold is set: see encodeFold. Every file name
// starts with a kind prefix ("m-", ...), so none is a reserved Windows
// device name (CON, NUL, COM1, ...), with or without an extension.
func fileNameFold(k kind, name string, fold bool) string {
	if !fold {
		return fileName(k, name)
	}
	s := kindPrefix[k] + encodeFold(name)
	if k == kindSemSlot || k == kindRWHolder {
		s += string(slotSep)
	}
	return s
}

// slotName is the file name of slot i of the semaphore whose slot prefix
// (fileName(kindSemSlot, name)) is prefix.
func slotName(prefix string, i int) string {
	return prefix + strconv.Itoa(i)
}

// slotKey returns, for a file name of a semaphore slot, the prefix shared by
// the slots of its semaphore (what waiters register under), or "" if file is
// not a slot file.
func slotKey(file string) string {
	if !strings.HasPrefix(file, kindPrefix[kindSemSlot]) {
		return ""
	}
	i := strings.LastIndexByte(file, slotSep)
	if i < 0 {
		return ""
	}
	return file[:i+1]
}
