package pace

import (
	"testing"
	"time"
)

// Pauses grow from min to max, jittered by at most ±50%, and Reset starts
// them over.
func TestPacer(t *testing.T) {
	p := New(10*time.Millisecond, 80*time.Millisecond)
	want := []time.Duration{10, 20, 40, 80, 80, 80}
	for i, w := range want {
		w *= time.Millisecond
		if d := p.Next(); d < w/2 || d > w*3/2 {
			t.Errorf("pause %d: %v, want %v ± 50%%", i, d, w)
		}
	}
	p.Reset()
	if d := p.Next(); d > 15*time.Millisecond {
		t.Errorf("pause after Reset: %v, want about the minimum", d)
	}
	q := New(0, -1)
	if d := q.Next(); d <= 0 || d > 2*time.Microsecond {
		t.Errorf("New(0, -1): first pause %v, want about a microsecond", d)
	}
}
