// Command report writes the results of a fault-checker run into
// RELIABILITY.md: the run's description, the scenario table with its
// totals, and the lease margin, each between its markers
// (<!-- faults:NAME:begin ... --> and <!-- faults:NAME:end -->); the
// hand-written text around them is kept.
//
//	(cd faults && DLOCK_FAULTS_RESULTS=/tmp/faults.json go test -count=1 -timeout 120m ./...)
//	(cd faults && go run ./cmd/report -in /tmp/faults.json -doc ../RELIABILITY.md -command '...')
//
// With -in a.json,b.json the rows of b (say, TestCLI re-run after a fix)
// replace the same scenarios of a, and the report says so. With -only
// NAME[,NAME] only those blocks are rewritten, e.g. the revocation block
// from a run of TestPGRevocationWindow alone:
//
//	(cd faults && DLOCK_FAULTS_RESULTS=/tmp/rev.json go test -count=1 -run TestPGRevocationWindow -v .)
//	(cd faults && go run ./cmd/report -in /tmp/rev.json -doc ../RELIABILITY.md -only revocation)
//
// The failover block (the Sentinel scenarios, without and with
// valkey.WithReplicas) is written only by a run that has them.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/dlock-go/dlock/faults"
)

func main() {
	in := flag.String("in", "", "results files written by the fault checker (DLOCK_FAULTS_RESULTS), comma-separated; rows of later files replace the same scenarios of earlier ones")
	doc := flag.String("doc", "../RELIABILITY.md", "Markdown file to update in place")
	command := flag.String("command", "", "the command that produced the run, shown in the report")
	only := flag.String("only", "", "rewrite only these blocks (comma-separated: run, results, margin, revocation, failover)")
	flag.Parse()
	if err := run(*in, *doc, *command, *only); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

func run(in, doc, command, only string) error {
	if in == "" {
		return fmt.Errorf("-in is required")
	}
	var res *faults.Results
	for _, path := range strings.Split(in, ",") {
		r, err := faults.ReadResults(path)
		if err != nil {
			return err
		}
		if res == nil {
			res = r
		} else {
			res.Merge(r)
		}
	}
	blocks := res.Markdown(command)
	if only != "" {
		picked := map[string]string{}
		for _, name := range strings.Split(only, ",") {
			b, ok := blocks[name]
			if !ok {
				return fmt.Errorf("-only: no block %q", name)
			}
			picked[name] = b
		}
		blocks = picked
	}
	_, withRun := blocks["run"]
	_, withResults := blocks["results"]
	if len(res.Rows) == 0 && (withRun || withResults) {
		return fmt.Errorf("%s has no scenario rows", in)
	}
	old, err := os.ReadFile(doc)
	if err != nil {
		return err
	}
	text, err := faults.UpdateDoc(string(old), blocks)
	if err != nil {
		return fmt.Errorf("%s: %w", doc, err)
	}
	st, err := os.Stat(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(doc, []byte(text), st.Mode().Perm())
}
