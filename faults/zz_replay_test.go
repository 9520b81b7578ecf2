package faults

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestReplay(t *testing.T) {
	dir := os.Getenv("REPLAY")
	if dir == "" {
		t.Skip()
	}
	paths, _ := filepath.Glob(filepath.Join(dir, "records-*.jsonl"))
	ss, err := ReadRecords(paths...)
	if err != nil {
		t.Fatal(err)
	}
	var fd struct {
		Faults []Fault
		Deaths []Death
	}
	b, _ := os.ReadFile(filepath.Join(dir, "faults.json"))
	_ = json.Unmarshal(b, &fd)
	lim := 1
	if os.Getenv("LIMIT") == "2" {
		lim = 2
	}
	r := Check(ss, fd.Faults, fd.Deaths, Spec{Limit: lim, LossSlack: 3500e6})
	for _, p := range r.Problems {
		t.Log(p)
	}
	r.Problems = nil
	t.Logf("%+v", r)
}
