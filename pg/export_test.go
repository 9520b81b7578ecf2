package pg

// Unexported names that the external tests (package pg_test) use.
const DefaultMaxLeasesPerConn = defaultMaxLeasesPerConn

var ParseKey = parseKey
