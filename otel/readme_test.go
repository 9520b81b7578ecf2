package dlockotel_test

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The span tree in README.md's Observability section is Example's output.
func TestReadmeTree(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Observability\n.*?```text\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no text block in an Observability section")
	}
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	o := regexp.MustCompile(`(?s)\t// Output:\n(.*?)\n}`).FindSubmatch(src)
	if o == nil {
		t.Fatal("example_test.go has no Output comment")
	}
	var want strings.Builder
	for _, line := range strings.Split(string(o[1]), "\n") {
		want.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "\t//"), " ") + "\n")
	}
	if got := string(m[1]); got != want.String() {
		t.Errorf("README.md's span tree is not Example's output (cd otel && go test -run Example -v):\nREADME:\n%s\nExample:\n%s", got, want.String())
	}
}
