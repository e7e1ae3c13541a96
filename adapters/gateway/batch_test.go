package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// pageEntry is a stored entry as the follower's scan sees it.
type pageEntry struct {
	seq  uint64
	name string
	j    []byte
}

func entries(seqs []uint64, size func(i int) int) []pageEntry {
	out := make([]pageEntry, len(seqs))
	for i, s := range seqs {
		out[i] = pageEntry{s, "message_send", []byte(fmt.Sprintf(`{"seq":%d,"body":%q}`, s, strings.Repeat("x", size(i))))}
	}
	return out
}

// build runs one store read's entries through a page.
func build(t *testing.T, batch bool, epoch string, es []pageEntry) []pageFrame {
	t.Helper()
	p := page{batch: batch}
	for _, e := range es {
		if err := p.add(epoch, e.seq, e.name, e.j); err != nil {
			t.Fatal(err)
		}
	}
	p.flush()
	return p.frames
}

// unpack returns the event frames a page's frames carry, in order,
// checking each frame's bounds and its recorded last seq and count.
func unpack(t *testing.T, frames []pageFrame) [][]byte {
	t.Helper()
	var out [][]byte
	for _, f := range frames {
		var got [][]byte
		switch f.typ {
		case "event":
			got = [][]byte{f.b}
		case "events":
			var w struct {
				Type   string            `json:"type"`
				Events []json.RawMessage `json:"events"`
			}
			if err := json.Unmarshal(f.b, &w); err != nil || w.Type != "events" {
				t.Fatalf("events frame %.80s: %v", f.b, err)
			}
			if len(w.Events) < 2 || len(w.Events) > maxBatchEvents {
				t.Fatalf("events frame of %d events", len(w.Events))
			}
			if len(f.b) > maxBatchBytes+len(batchHead)+2 {
				t.Fatalf("events frame of %d bytes", len(f.b))
			}
			for _, e := range w.Events {
				got = append(got, e)
			}
		default:
			t.Fatalf("frame type %q", f.typ)
		}
		var last struct{ Seq uint64 }
		json.Unmarshal(got[len(got)-1], &last)
		if f.n != len(got) || f.seq != last.Seq {
			t.Fatalf("frame says %d events up to seq %d; holds %d up to %d", f.n, f.seq, len(got), last.Seq)
		}
		out = append(out, got...)
	}
	return out
}

// A page's events frames carry, in order, exactly the event frames the
// same entries make one by one, byte for byte, within the bounds; a lone
// entry or one larger than a batch travels as its event frame.
func TestPageBatches(t *testing.T) {
	seqs := func(n int) []uint64 {
		out := make([]uint64, n)
		for i := range out {
			out[i] = uint64(3*i + 7) // sequences may skip numbers
		}
		return out
	}
	small := func(int) int { return 64 }
	cases := []struct {
		name   string
		epoch  string
		es     []pageEntry
		frames []string // the page's frame types, in order
	}{
		{"one entry", "e1", entries(seqs(1), small), []string{"event"}},
		{"two", "e1", entries(seqs(2), small), []string{"events"}},
		{"a full page", "e1", entries(seqs(timelinePage), small), []string{"events"}},
		// 900 bytes each: 64 KiB holds 68 of them.
		{"bounded by bytes", "e1", entries(seqs(timelinePage), func(int) int { return 900 }), []string{"events", "events"}},
		{"a large entry between small ones", "e1", entries(seqs(5), func(i int) int {
			if i == 2 {
				return maxBatchBytes
			}
			return 64
		}), []string{"events", "event", "events"}},
		{"a large entry last", "e1", entries(seqs(3), func(i int) int { return []int{64, 64, maxBatchBytes}[i] }), []string{"events", "event"}},
		{"a large entry first", "e1", entries(seqs(3), func(i int) int { return []int{maxBatchBytes, 64, 64}[i] }), []string{"event", "events"}},
		{"an epoch JSON must escape", `e"1`, entries(seqs(3), small), []string{"events"}},
		// json.Marshal (an epoch it must escape) escapes each < of the
		// entries too, 6 bytes for 1: the second does not fit after all.
		{"entries that grow when escaped", `e"1`, []pageEntry{
			{1, "n", []byte(`{"b":"` + strings.Repeat("<", 8000) + `"}`)},
			{2, "n", []byte(`{"b":"` + strings.Repeat("<", 8000) + `"}`)},
			{3, "n", []byte(`{"b":"x"}`)},
		}, []string{"event", "events"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var want [][]byte
			for _, e := range c.es {
				b, err := eventFrameJSON(c.epoch, e.seq, e.name, e.j)
				if err != nil {
					t.Fatal(err)
				}
				want = append(want, b)
			}
			single := build(t, false, c.epoch, c.es)
			if got := unpack(t, single); len(single) != len(c.es) || !equalFrames(got, want) {
				t.Fatalf("without batches: %d frames, not the %d event frames", len(single), len(c.es))
			}
			frames := build(t, true, c.epoch, c.es)
			var types []string
			for _, f := range frames {
				types = append(types, f.typ)
			}
			if fmt.Sprint(types) != fmt.Sprint(c.frames) {
				t.Fatalf("frames %v, want %v", types, c.frames)
			}
			if got := unpack(t, frames); !equalFrames(got, want) {
				t.Fatalf("the batches carry other bytes than the event frames:\n%q\nwant\n%q", got, want)
			}
		})
	}
}

func equalFrames(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// A page reused for the next read starts empty.
func TestPageReset(t *testing.T) {
	p := page{batch: true}
	for _, e := range entries([]uint64{1, 2, 3}, func(int) int { return 8 }) {
		p.add("e", e.seq, e.name, e.j)
	}
	p.reset()
	p.add("e", 4, "n", []byte(`{}`))
	p.flush()
	if len(p.frames) != 1 || p.frames[0].typ != "event" || p.frames[0].seq != 4 {
		t.Fatalf("after reset: %+v", p.frames)
	}
}
