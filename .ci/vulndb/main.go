// Command vulndb turns a folder of Go vulnerability reports in OSV JSON (the
// data/osv folder of the golang.org/x/vulndb module, which the Go module
// proxy serves) into the database layout govulncheck reads with
// -db file:///DIR: index/db.json, index/modules.json and ID/<id>.json.
// CI uses it because vuln.go.dev is not reachable from its machines.
//
//	go run . build OSVDIR OUTDIR
//	govulncheck -format json ... | go run . check
//
// check reads govulncheck's JSON stream and fails (exit 1) when dlock's
// code calls a vulnerable symbol of a module it requires; findings in the
// standard library are listed but do not fail, because they belong to the
// toolchain that built the check, not to dlock (a user's build uses the
// user's toolchain).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

type entry struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Affected []struct {
		Package struct {
			Name string `json:"name"`
		} `json:"package"`
	} `json:"affected"`
}

type modVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
}

type module struct {
	Path  string    `json:"path"`
	Vulns []modVuln `json:"vulns"`
}

func main() {
	var err error
	switch {
	case len(os.Args) == 4 && os.Args[1] == "build":
		err = build(os.Args[2], os.Args[3])
	case len(os.Args) == 2 && os.Args[1] == "check":
		err = check(os.Stdin)
	default:
		fmt.Fprintln(os.Stderr, "usage: vulndb build OSVDIR OUTDIR | vulndb check < govulncheck.json")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vulndb:", err)
		os.Exit(1)
	}
}

// finding is one message of govulncheck's JSON stream that reports a
// vulnerability; trace[0] is the vulnerable module, package and symbol.
type finding struct {
	Finding *struct {
		OSV   string `json:"osv"`
		Fixed string `json:"fixed_version"`
		Trace []struct {
			Module   string `json:"module"`
			Version  string `json:"version"`
			Package  string `json:"package"`
			Function string `json:"function"`
		} `json:"trace"`
	} `json:"finding"`
}

func check(r io.Reader) error {
	dec := json.NewDecoder(r)
	called := map[string]string{} // osv -> where, for calls into required modules
	std := map[string]bool{}
	for {
		var m finding
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("reading govulncheck output: %w", err)
		}
		f := m.Finding
		if f == nil || len(f.Trace) == 0 || f.Trace[0].Function == "" {
			continue // not a call of a vulnerable symbol
		}
		t := f.Trace[0]
		if t.Module == "stdlib" {
			std[f.OSV] = true
			continue
		}
		called[f.OSV] = fmt.Sprintf("%s@%s %s.%s (fixed in %s)", t.Module, t.Version, t.Package, t.Function, f.Fixed)
	}
	for _, id := range slices.Sorted(maps.Keys(std)) {
		fmt.Printf("note: %s is in this toolchain's standard library (%s), not in a module dlock requires\n", id, runtime.Version())
	}
	if len(called) == 0 {
		fmt.Println("govulncheck: dlock calls no known vulnerable symbol of the modules it requires")
		return nil
	}
	for _, id := range slices.Sorted(maps.Keys(called)) {
		fmt.Printf("%s: %s\n", id, called[id])
	}
	return fmt.Errorf("dlock calls vulnerable symbols named in %d reports (above): upgrade those modules", len(called))
}

func build(src, out string) error {
	files, err := filepath.Glob(filepath.Join(src, "*.json"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("no OSV reports in %s", src)
	}
	for _, d := range []string{"index", "ID"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return err
		}
	}
	mods := map[string][]modVuln{}
	var latest time.Time
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		var e entry
		if err := json.Unmarshal(b, &e); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		if e.ID == "" || strings.ContainsAny(e.ID, `/\`) {
			return fmt.Errorf("%s: bad id %q", f, e.ID)
		}
		if e.Modified.After(latest) {
			latest = e.Modified
		}
		seen := map[string]bool{}
		for _, a := range e.Affected {
			if p := a.Package.Name; p != "" && !seen[p] {
				seen[p] = true
				mods[p] = append(mods[p], modVuln{ID: e.ID, Modified: e.Modified})
			}
		}
		if err := os.WriteFile(filepath.Join(out, "ID", e.ID+".json"), b, 0o644); err != nil {
			return err
		}
	}
	index := make([]module, 0, len(mods))
	for p, v := range mods {
		index = append(index, module{Path: p, Vulns: v})
	}
	sort.Slice(index, func(i, j int) bool { return index[i].Path < index[j].Path })
	if err := writeJSON(filepath.Join(out, "index", "modules.json"), index); err != nil {
		return err
	}
	return writeJSON(filepath.Join(out, "index", "db.json"), map[string]time.Time{"modified": latest})
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
