package dlock_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// readmePrelude declares what the README's Go blocks use without defining:
// the caller's ctx, its functions and its clients.
const readmePrelude = `package readmecheck

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
	valkeygo "github.com/valkey-io/valkey-go"

	"github.com/dlock-go/dlock"
	"github.com/dlock-go/dlock/fs"
)

var (
	ctx       = context.Background()
	pool      *pgxpool.Pool
	client    valkeygo.Client
	fsBackend *fs.Backend
)

func build(context.Context) error  { return nil }
func read(context.Context) error   { return nil }
func write(context.Context) error  { return nil }
func encode(context.Context) error { return nil }
func transfer(context.Context) error { return nil }
func stale(context.Context) bool     { return true }

var mu = dlock.NewMutex(fsBackend)
`

// readmeImports are the packages a block may use without importing them.
var readmeImports = map[string]string{
	"context":   "context",
	"errors":    "errors",
	"time":      "time",
	"log":       "log",
	"testing":   "testing",
	"dlock":     "github.com/dlock-go/dlock",
	"fs":        "github.com/dlock-go/dlock/fs",
	"pg":        "github.com/dlock-go/dlock/pg",
	"valkey":    "github.com/dlock-go/dlock/valkey",
	"dlocktest": "github.com/dlock-go/dlock/dlocktest",
}

// Every Go block of README.md compiles, as pasted into a function (or, for
// a block of declarations, into a file): statements are wrapped in a
// function (one returning an error if the block returns), imports the
// block lacks are added. A block marked "go skip"
// names a package that cannot exist here (a user's own backend).
func TestReadmeGoBlocksCompile(t *testing.T) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to compile README.md's blocks: %v", err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?ms)^```go( skip)?\n(.*?)^```").FindAllStringSubmatch(string(readme), -1)
	if len(blocks) < 3 {
		t.Fatalf("found %d Go blocks in README.md; the pattern is broken", len(blocks))
	}
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	overlay := map[string]string{}
	add := func(name, src string) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		overlay[filepath.Join(root, "readmecheck", name)] = p
	}
	add("prelude.go", readmePrelude)
	compiled := 0
	for i, b := range blocks {
		if b[1] != "" {
			continue
		}
		add(fmt.Sprintf("block%d.go", i), readmeFile(i, b[2]))
		compiled++
	}
	js, err := json.Marshal(map[string]any{"Replace": overlay})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "overlay.json"), js, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goCmd, "build", "-overlay", filepath.Join(dir, "overlay.json"), "./readmecheck")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README.md's Go blocks do not compile (blockN is the Nth block, from 0):\n%s", out)
	}
	t.Logf("%d of %d Go blocks of README.md compiled", compiled, len(blocks))
}

// readmeFile makes a Go file of README block i.
func readmeFile(i int, src string) string {
	imports := regexp.MustCompile(`(?s)^\s*import \((.*?)\)\n`)
	var own string
	if m := imports.FindStringSubmatch(src); m != nil {
		own = m[1]
		src = src[len(m[0]):]
	}
	code := regexp.MustCompile(`//.*`).ReplaceAllString(src, "") // uses in comments need no import
	var b strings.Builder
	b.WriteString("package readmecheck\n\nimport (\n" + own)
	for name, path := range readmeImports {
		if strings.Contains(own, `"`+path+`"`) {
			continue
		}
		if regexp.MustCompile(`\b` + name + `\.`).MatchString(code) {
			fmt.Fprintf(&b, "\t%q\n", path)
		}
	}
	b.WriteString(")\n\n")
	if regexp.MustCompile(`(?m)^func `).MatchString(src) {
		b.WriteString(src)
	} else if regexp.MustCompile(`(?m)^return .*\s*\z`).MatchString(code) { // ends in a return: pasted into a func that returns an error
		fmt.Fprintf(&b, "func block%d() error {\n%s}\n", i, src)
	} else {
		fmt.Fprintf(&b, "func block%d() {\n%s}\n", i, src)
	}
	return b.String()
}
