// Package bench measures dlock against its peers and against the cheapest
// correct lock a user could write by hand ("floor"), on the same servers, in
// the same run: uncontended acquire + release latency and allocations,
// hand-off latency from a release to a waiter's acquisition, throughput of
// 64 goroutines on one hot key and on distinct keys, fairness of 8 clients in
// 8 processes saturating one lock (BenchmarkFairness, which re-executes the
// test binary as its clients: TestFairnessClient), and how many locks one
// process can hold.
//
// In the latency and throughput benchmarks the libraries of one backend take
// turns (a block of acquisitions, one hand-off, or 100 ms of throughput
// each, in a new random order every turn), so that the load of a shared
// machine, which comes and goes over seconds, falls on all of them alike;
// each library is then reported as its own sub-benchmark,
// Benchmark<Name>/<backend>/<library>. -test.bench selects libraries as
// usual; -test.benchtime gives each library its budget.
//
// It is a separate module so that no peer ever enters dlock's go.mod. The
// benchmarks are in bench_test.go; the libraries and their settings in
// libs_test.go. Run everything, with throwaway servers, and rewrite
// BENCHMARKS.md and its chart:
//
//	bash bench/run
//
// A benchmark whose server is absent (DLOCK_TEST_PG_URL,
// DLOCK_TEST_VALKEY_ADDR unset) is skipped, unless DLOCK_REQUIRE_SERVERS=1.
//
// Environment:
//
//	DLOCK_BENCH_SCALE_N        locks BenchmarkScale tries to hold at once (default 1000)
//	DLOCK_BENCH_FAIR_DURATION  saturation time of each BenchmarkFairness run (default 1s)
package bench
