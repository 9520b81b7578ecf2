package fs

import (
	"strings"
	"testing"
)

// windowsReserved reports whether a file name is one Windows refuses or
// changes: a device name (CON, PRN, AUX, NUL, COM0-9, LPT0-9, also with an
// extension, any case), a trailing dot or space, a character of <>:"/\|?*
// or a control character, or more than 255 characters.
func windowsReserved(name string) string {
	if name == "" || len(name) > 255 {
		return "length"
	}
	if c := name[len(name)-1]; c == '.' || c == ' ' {
		return "trailing dot or space"
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || strings.IndexByte(`<>:"/\|?*`, c) >= 0 {
			return "character " + string(c)
		}
	}
	base := strings.ToUpper(name)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	base = strings.TrimRight(base, " ")
	switch base {
	case "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$":
		return "device " + base
	}
	if len(base) == 4 && (strings.HasPrefix(base, "COM") || strings.HasPrefix(base, "LPT")) && base[3] >= '0' && base[3] <= '9' {
		return "device " + base
	}
	return ""
}

var foldExamples = []string{
	"CON", "con", "Con.txt", "NUL", "nul.tar.gz", "aux", "PRN", "COM1", "com9", "LPT1", "lpt5.log",
	"a", "A", "ab", "aB", "Ab", "AB", "%41", "%61", "a.", "a..", "A.", "a ", "a  ", " a", ".", "..", "...",
	`a<b`, `a>b`, `a:b`, `a"b`, `a/b`, `a\b`, `a|b`, `a?b`, `a*b`, "a\x00b", "a\x1fb", "\xff\xfe",
	"job-42", "Job-42", "JOB-42", strings.Repeat("x", 300), strings.Repeat("X", 300),
	strings.Repeat("aB", 150), strings.Repeat("Ab", 150),
}

// The Windows mapping (fileNameFold with fold) gives legal Windows file
// names only, and names that differ only by case (which Windows file
// systems do not tell apart) never share a file.
func TestWindowsFileNames(t *testing.T) {
	seen := map[string]string{}
	for _, k := range []kind{kindMutex, kindRW, kindRWGate, kindSemSlot, kindSemCounter, kindMutexWait, kindSemWait} {
		for _, name := range foldExamples {
			file := fileNameFold(k, name, true)
			if k == kindSemSlot {
				file = slotName(file, 7)
			}
			if why := windowsReserved(file); why != "" {
				t.Errorf("kind %d, name %q: file name %q is not a legal Windows name (%s)", k, name, file, why)
			}
			folded := strings.ToLower(file)
			if prev, ok := seen[folded]; ok && prev != name {
				t.Errorf("names %q and %q map to files %q that Windows does not tell apart", prev, name, file)
			}
			seen[folded] = name
			if fold := fileNameFold(k, name, false); k != kindSemSlot && fold != fileName(k, name) {
				t.Errorf("fileNameFold without fold: %q, want fileName's %q", fold, fileName(k, name))
			}
		}
		clear(seen)
	}
	if got, want := encodeFold("ab.c"), "ab.c"; got != want {
		t.Errorf("encodeFold(%q) = %q, want %q (lower-case names are kept)", "ab.c", got, want)
	}
	if got, want := encodeFold("Ab."), "%41b%2E"; got != want {
		t.Errorf("encodeFold(%q) = %q, want %q", "Ab.", got, want)
	}
}

// FuzzEncodeFold: two different names never have encodings that a
// case-insensitive file system takes for one, and every encoding is a
// legal Windows file name.
func FuzzEncodeFold(f *testing.F) {
	for i, a := range foldExamples {
		f.Add(a, foldExamples[(i+1)%len(foldExamples)])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, eb := encodeFold(a), encodeFold(b)
		if a != b && strings.EqualFold(ea, eb) {
			t.Fatalf("names %q and %q: encodings %q and %q differ only by case", a, b, ea, eb)
		}
		if why := windowsReserved("m-" + ea); why != "" {
			t.Fatalf("name %q: %q is not a legal Windows name (%s)", a, "m-"+ea, why)
		}
	})
}
