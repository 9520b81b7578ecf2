package holder

import (
	"os"
	"testing"
	"time"

	"github.com/dlock-go/dlock/backend"
)

func TestSelf(t *testing.T) {
	now := time.Now()
	h := Self("job 7", now)
	want, _ := os.Hostname()
	if h.Host != want || h.PID != os.Getpid() || h.Owner != "job 7" || !h.Since.Equal(now) {
		t.Fatalf("Self = %+v", h)
	}
	if h.ProcessStart.IsZero() || h.ProcessStart.After(now) {
		t.Fatalf("ProcessStart %v, want before %v", h.ProcessStart, now)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, h := range []backend.Holder{
		{},
		{Host: "h", PID: 1},
		Self("deploy job 4411 \x00 ünïcödé \"quoted\"", time.Unix(1700000000, 123456789)),
	} {
		got, err := Decode(Encode(h))
		if err != nil {
			t.Fatalf("Decode(Encode(%+v)): %v", h, err)
		}
		if got.Host != h.Host || got.PID != h.PID || got.Owner != h.Owner ||
			!got.ProcessStart.Equal(h.ProcessStart) || !got.Since.Equal(h.Since) {
			t.Fatalf("round trip of %+v gave %+v", h, got)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode(Self("x", time.Now())))
	f.Add([]byte(`{"o":1}`))
	f.Add([]byte(`{"p":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Decode(b)
		if err != nil {
			return
		}
		if len(h.Owner) > MaxOwner || h.PID < 0 {
			t.Fatalf("Decode accepted %+v", h)
		}
		if _, err := Decode(Encode(h)); err != nil {
			t.Fatalf("re-encoding %+v: %v", h, err)
		}
	})
}
