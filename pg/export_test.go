package pg

// Unexported names that the external tests (package pg_test) use.
const DefaultMaxLeasesPerConn = defaultMaxLeasesPerConn

var ParseKey = parseKey

// IdleStack returns the length of b's stack of idle lock connections.
func IdleStack(b *Backend) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.idle)
}
