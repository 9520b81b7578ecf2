package dlock_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The contract lives in backend/: no backend, nor backend/ or internal/,
// depends on the root package (they stand below it, as io/fs stands below
// os).
func TestBackendsDoNotImportRoot(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to list imports: %v", err)
	}
	for _, pkg := range []string{"./backend", "./internal/...", "./fs", "./pg", "./valkey"} {
		out, err := exec.Command(goCmd, "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if dep == "github.com/dlock-go/dlock" {
				t.Errorf("%s depends on the root package github.com/dlock-go/dlock; use package backend's errors", pkg)
			}
		}
	}
}
