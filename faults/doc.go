// Package faults is dlock's safety checker: it runs contending worker
// processes against every backend and primitive while injecting faults, and
// checks the recorded history of critical sections, Jepsen-style.
//
// It is a separate module (github.com/dlock-go/dlock/faults) so that its
// heavy test-only dependencies — toxiproxy, which brings prometheus and
// zerolog, and porcupine — never enter the library's go.mod.
//
// The package itself holds the parts that are worth testing on their own:
//
//   - Now, a system-wide monotonic clock (CLOCK_MONOTONIC), so that
//     timestamps taken in different processes compare;
//   - Record and ReadRecords, the per-process history files workers append
//     to;
//   - Resource, a slow read-modify-write counter in a file outside the lock
//     service, which counts lost updates and enforces fencing tokens;
//   - Check, the history checker: a linearizability check of the sections
//     against a lock model with porcupine, plus overlap, loss-reporting,
//     fencing-token and semaphore-limit checks;
//   - Results, what a run writes (DLOCK_FAULTS_RESULTS=path), and its
//     Markdown rendering, which the command faults/cmd/report writes into
//     RELIABILITY.md between markers.
//
// The scenarios (fault injection with toxiproxy run in-process, SIGSTOP,
// SIGKILL, server restarts, Sentinel failovers, session kills, key and file
// deletion) live in the package's tests; RELIABILITY.md at the repository
// root reports their results and the command that reproduces them.
//
// Environment: DLOCK_FAULTS_SHORT=1 (or go test -short) for the short mode,
// DLOCK_FAULTS_SCALE to stretch the long mode's 20 s per scenario,
// DLOCK_FAULTS_PARALLEL for the number of scenarios whose workload runs at
// once (default 2; 3 in the short mode; one more prepares meanwhile),
// DLOCK_FAULTS_RESULTS for the results file, DLOCK_FAULTS_KEEP=dir to keep
// the histories and worker logs of failing scenarios (of every scenario
// with DLOCK_FAULTS_KEEP_ALL=1).
package faults
