package valkey

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dlock-go/dlock/backend"
)

// Key layout. Every key and channel of one lock is
//
//	prefix + "{" + enc(name) + "}:" + suffix
//
// so the cluster hash tag is exactly enc(name): all keys of one lock share a
// slot, and nothing in the name can move them elsewhere, because enc never
// produces '{' or '}'. enc is injective:
//
//   - names up to maxPlainName bytes are escaped: bytes 0x21-0x7E other than
//     '{', '}', '%' and '~' stand for themselves, every other byte is "%XX"
//     (upper-case hex);
//   - longer names become the escaped first longNameHead bytes, '~', and the
//     hex SHA-256 of the whole name. Only this form contains '~', so the two
//     forms never meet, and distinct long names meet only on a SHA-256
//     collision.
//
// The suffixes (see kind) keep a Mutex, an RWMutex and a Semaphore of one
// name apart:
//
//	m      mutex: the lock (a string holding the owner's token, and its holder record when taken free; PX lease)
//	m:f    mutex: the fencing counter
//	m:q    mutex: the waiter queue (sorted set: waiter scored by arrival, server µs)
//	m:d    mutex: the waiters' deadlines (sorted set: waiter scored by expiry, server ms)
//	m:h    mutex: holder records (hash: token -> holder.Encode record; see holders.go)
//	m:n    mutex: the pub/sub channel its releases are announced on
//	rw:r   RW: readers (sorted set: token scored by expiry, server ms)
//	rw:w   RW: the writer (string, PX lease)
//	rw:u   RW: the upgradeable reader (string, PX lease; see upgrade.go)
//	rw:a   RW: the waiter queue ("r", "w" or "u" and the waiter's id, by arrival; a waiting upgrade at 0)
//	rw:d   RW: the waiters' deadlines
//	rw:f   RW: the fencing counter
//	rw:h   RW: holder records of the readers, the writer and the upgradeable reader
//	rw:n   RW: the channel
//	s      semaphore: holders (sorted set: token scored by expiry)
//	s:f    semaphore: the fencing counter
//	s:q    semaphore: the waiter queue
//	s:d    semaphore: the waiters' deadlines
//	s:h    semaphore: holder records
//	s:n    semaphore: the channel
//
// (rw:q, the waiting writers of earlier versions, is no longer used.) The
// acquire scripts take the keys in this order (see holdersKey), the
// channel excepted; rw:u is taken by the upgradeable reader's only,
// between rw:f and rw:h (see upgradeSuffixes).
const (
	maxPlainName = 200
	longNameHead = 48
)

// keyBase returns prefix + "{" + enc(name) + "}:".
func keyBase(prefix, name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w: empty name", backend.ErrInvalidName)
	}
	var b strings.Builder
	b.Grow(len(prefix) + 3 + min(len(name), maxPlainName)*3 + 1 + 2*sha256.Size)
	b.WriteString(prefix)
	b.WriteByte('{')
	if len(name) <= maxPlainName {
		escapeTo(&b, name)
	} else {
		escapeTo(&b, name[:longNameHead])
		b.WriteByte('~')
		sum := sha256.Sum256([]byte(name))
		b.WriteString(hex.EncodeToString(sum[:]))
	}
	b.WriteString("}:")
	return b.String(), nil
}

// plain reports whether the byte c stands for itself in a key.
func plain(c byte) bool {
	return c > 0x20 && c < 0x7f && c != '{' && c != '}' && c != '%' && c != '~'
}

func escapeTo(b *strings.Builder, s string) {
	const hexdig = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
}

// kind is the kind of a lease; it picks the keys and scripts.
type kind uint8

const (
	kindMutex kind = iota
	kindRead
	kindWrite
	kindSem
	kindUpgrade // an RW lock's upgradeable reader (upgrade.go)
)

func (k kind) String() string {
	switch k {
	case kindMutex:
		return "mutex"
	case kindRead:
		return "read lock"
	case kindWrite:
		return "write lock"
	case kindUpgrade:
		return "upgradeable read lock"
	default:
		return "semaphore"
	}
}

// Keys of each kind, from a key base: what the acquire scripts take. The
// lock's held key comes first (an RW lock's writer second), its queue and
// deadlines third and fourth.
func mutexKeys(base string) []string { k, _ := lockKeys(base, kindMutex); return k }
func rwKeys(base string) []string    { k, _ := lockKeys(base, kindRead); return k }
func semKeys(base string) []string   { k, _ := lockKeys(base, kindSem); return k }

var (
	mutexSuffixes = []string{"m", "m:f", "m:q", "m:d", "m:h", "m:n"}
	rwSuffixes    = []string{"rw:r", "rw:w", "rw:a", "rw:d", "rw:f", "rw:h", "rw:n"}
	semSuffixes   = []string{"s", "s:f", "s:q", "s:d", "s:h", "s:n"}
)

// lockKeys returns the keys the acquire script of a lock of kind k takes,
// and the lock's channel, all cut from one string (one allocation).
func lockKeys(base string, k kind) (keys []string, ch string) {
	suf := suffixes(k)
	n := 0
	for _, x := range suf {
		n += len(base) + len(x)
	}
	var b strings.Builder
	b.Grow(n)
	for _, x := range suf {
		b.WriteString(base)
		b.WriteString(x)
	}
	return cutKeys(nil, b.String(), len(base), suf)
}

// suffixes are the suffixes of the keys of a lock of kind k, its channel
// last.
func suffixes(k kind) []string {
	switch k {
	case kindRead, kindWrite:
		return rwSuffixes
	case kindUpgrade:
		return upgradeSuffixes
	case kindSem:
		return semSuffixes
	}
	return mutexSuffixes
}

// cutKeys cuts all, the keys and channel of a lock (a key base of nb bytes
// and each suffix of suf in turn), into the keys (in dst when it has room)
// and the channel.
func cutKeys(dst []string, all string, nb int, suf []string) (keys []string, ch string) {
	keys = dst[:0:cap(dst)]
	if cap(keys) < len(suf)-1 {
		keys = make([]string, len(suf)-1)
	}
	keys = keys[:len(suf)-1]
	at := 0
	for i, x := range suf {
		s := all[at : at+nb+len(x)]
		at += len(s)
		if i < len(keys) {
			keys[i] = s
		} else {
			ch = s
		}
	}
	return keys, ch
}

// lockStrings returns keyBase(prefix, name) and lockKeys of it, all cut
// from one string (one allocation); the keys go in dst when it has room.
func lockStrings(dst []string, prefix, name string, k kind) (base string, keys []string, ch string, err error) {
	if name == "" {
		return "", nil, "", fmt.Errorf("%w: empty name", backend.ErrInvalidName)
	}
	if len(name) > maxPlainName {
		if base, err = keyBase(prefix, name); err != nil {
			return "", nil, "", err
		}
		keys, ch = lockKeys(base, k)
		return base, append(dst[:0], keys...), ch, nil
	}
	suf := suffixes(k)
	nb := len(prefix) + 3 // "{" and "}:"
	for i := 0; i < len(name); i++ {
		if plain(name[i]) {
			nb++
		} else {
			nb += 3
		}
	}
	n := nb
	for _, x := range suf {
		n += nb + len(x)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(prefix)
	b.WriteByte('{')
	escapeTo(&b, name)
	b.WriteString("}:")
	for _, x := range suf {
		b.WriteString(b.String()[:nb])
		b.WriteString(x)
	}
	all := b.String()
	base = all[:nb]
	keys, ch = cutKeys(dst, all[nb:], nb, suf)
	return base, keys, ch, nil
}

// lockStrs are the key base, the acquire script's keys and the channel
// of one lock of one kind (lockStrings): immutable once made, shared by
// every request for the lock.
type lockStrs struct {
	base  string
	keys  []string
	ch    string
	rkeys [5]string // a lease's release keys (see releaseKeys)
	// busyUntil (ns since busyEpoch) is when the lock stops counting as
	// contended: until then a mutex's acquisitions and releases go
	// straight to the full scripts (acquireMutex, releaseString) rather
	// than try the uncontended ones first (acquireMutexFree,
	// releaseMutexFree), which would answer notFree and cost a round
	// trip.
	busyUntil atomic.Int64
}

// busyFor is how long a lock counts as contended after a sign of it (an
// uncontended script's notFree, an attempt the full script refused, a
// release that woke or granted a waiter). A waiter renews it at each
// refused attempt (every maxPoll at least).
const busyFor = 2 * time.Second

// busyEpoch is the origin of busyUntil's times (read by the monotonic
// clock).
var busyEpoch = time.Now()

// busy reports whether the lock counts as contended at now.
func (s *lockStrs) busy(now time.Time) bool {
	return now.Sub(busyEpoch) < time.Duration(s.busyUntil.Load())
}

// markBusy makes the lock count as contended for busyFor from now.
func (s *lockStrs) markBusy(now time.Time) {
	s.busyUntil.Store(int64(now.Sub(busyEpoch) + busyFor))
}

// newLockStrs returns the lockStrs of a lock of kind k.
func newLockStrs(base string, keys []string, ch string, k kind) *lockStrs {
	return &lockStrs{base: base, keys: keys, ch: ch, rkeys: releaseKeys(keys, k)}
}

// strCache keeps the lockStrs of the locks of one core asked for lately,
// so that a name taken again and again is escaped and cut once (a
// request for it then allocates only itself). It is bounded: it holds
// locks whose key base is at most strCacheBase bytes, at most strCacheMax
// per kind (about 1 MB), and a kind's map is emptied when full.
type strCache struct {
	mu sync.RWMutex
	m  [kindUpgrade + 1]map[string]*lockStrs
}

// strCacheMax is how many locks of one kind a strCache holds;
// strCacheBase the longest key base it keeps.
const (
	strCacheMax  = 1024
	strCacheBase = 128
)

// get returns the lockStrs of the lock name of kind k under prefix (the
// core's), or the error of an invalid name.
func (sc *strCache) get(prefix, name string, k kind) (*lockStrs, error) {
	sc.mu.RLock()
	ls := sc.m[k][name]
	sc.mu.RUnlock()
	if ls != nil {
		return ls, nil
	}
	base, keys, ch, err := lockStrings(nil, prefix, name, k)
	if err != nil {
		return nil, err
	}
	ls = newLockStrs(base, keys, ch, k)
	if len(ls.base) > strCacheBase {
		return ls, nil
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.m[k] == nil || len(sc.m[k]) >= strCacheMax {
		sc.m[k] = make(map[string]*lockStrs)
	}
	sc.m[k][name] = ls
	return ls, nil
}

// queueKeys are the waiter queue of a lock of kind k and its deadlines.
func queueKeys(base string, k kind) (q, d string) {
	switch k {
	case kindMutex:
		return base + "m:q", base + "m:d"
	case kindRead, kindWrite, kindUpgrade:
		return base + "rw:a", base + "rw:d"
	default:
		return base + "s:q", base + "s:d"
	}
}

// queueMember is a waiter's member of the queue of a lock of kind k.
func queueMember(k kind, waiter string) string {
	switch k {
	case kindRead:
		return "r" + waiter
	case kindWrite:
		return "w" + waiter
	case kindUpgrade:
		return "u" + waiter
	default:
		return waiter
	}
}

// channel is where releases of a lock of kind k are announced.
func channel(base string, k kind) string {
	switch k {
	case kindMutex:
		return base + "m:n"
	case kindRead, kindWrite, kindUpgrade:
		return base + "rw:n"
	default:
		return base + "s:n"
	}
}

// heldKey is the key a lease of kind k is recorded in (the one extended and
// released).
func heldKey(base string, k kind) string {
	switch k {
	case kindMutex:
		return base + "m"
	case kindRead:
		return base + "rw:r"
	case kindWrite:
		return base + "rw:w"
	case kindUpgrade:
		return base + "rw:u"
	default:
		return base + "s"
	}
}
