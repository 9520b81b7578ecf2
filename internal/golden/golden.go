// Package golden compares a test's printed error messages with a golden
// file, so that every package of dlock checks its messages the same way.
// It is imported only by tests.
package golden

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden files from this run")

// Case is one error path: what it does, and a function that returns its
// error.
type Case struct {
	What string
	Err  func(t *testing.T) error
}

// Check runs each case as a subtest and compares the "what:\n\tmessage"
// lines of all of them with the file at path, showing a cmp.Diff when they
// differ. With -update it rewrites the file instead. A case that returns no
// error fails.
func Check(t *testing.T, path string, cases []Case) {
	t.Helper()
	var b strings.Builder
	for _, c := range cases {
		var err error
		t.Run(strings.ReplaceAll(c.What, " ", "_"), func(t *testing.T) { err = c.Err(t) })
		if err == nil {
			t.Errorf("%s: no error", c.What)
			continue
		}
		fmt.Fprintf(&b, "%s:\n\t%s\n", c.What, err)
	}
	got := b.String()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with go test -run %s -update)", err, t.Name())
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("error messages differ from %s (-want +got); if intended, rerun with -update:\n%s", path, d)
	}
}

// C returns the Case of what.
func C(what string, err func(t *testing.T) error) Case { return Case{What: what, Err: err} }
