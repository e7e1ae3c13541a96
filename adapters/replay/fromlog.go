package replay

import (
	"container/heap"
	"context"
	"fmt"
	"io"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
)

// MaxLogEvents bounds the operations one replay reads from a log: replay
// holds them all (the what-if run goes over them again). Past it, narrow the
// history with a later FromOffset.
const MaxLogEvents = 5_000_000

// logReadMax is the entries one Read asks for.
const logReadMax = 1000

// LogPos is where an operation replayed from a log sits in that log.
type LogPos struct {
	Partition int32 `json:"partition"`
	Offset    int64 `json:"offset"`
}

// SourceRow opens the output of a replay of a log: what was read. Derived
// records (fan-out copies) are not operations and are skipped; unreadable
// ones (undecodable, or a kind this build does not know) are reported as
// error rows.
type SourceRow struct {
	Type       string  `json:"type"` // "source"
	Log        string  `json:"log"`
	Partitions int32   `json:"partitions"`
	FromOffset int64   `json:"from_offset"`
	Ends       []int64 `json:"ends"` // per partition: where the read stopped
	Records    int64   `json:"records"`
	Operations int     `json:"operations"`
	Derived    int64   `json:"derived"`
	Unreadable int64   `json:"unreadable"`
}

// RunLog replays the operations of lg from offset from of every partition
// up to each partition's end when the run starts, in the order of their
// times (each partition's own order kept; equal times by partition), as
// Run replays JSON lines: what-if and time travel on a production history.
// Each decision, error and what-if row carries the operation's position in
// lg ("from"); "line" is its rank in that order. desc names lg in the
// source row.
func RunLog(ctx context.Context, cfg Config, lg engine.Log, from int64, desc string, out io.Writer) error {
	if from < 0 {
		return engine.Errorf(engine.CodeInvalidArgument, "replay: --from-offset %d is negative", from)
	}
	if cfg.App == "" {
		cfg.App = "demo"
	}
	lines, pos, src, err := linesOfLog(ctx, lg, from, cfg.App)
	if err != nil {
		return err
	}
	src.Log = desc
	return run(ctx, cfg, lines, pos, []any{src}, out)
}

// linesOfLog reads the operations of lg and merges the partitions by time.
func linesOfLog(ctx context.Context, lg engine.Log, from int64, app string) ([]opjson.Line, []LogPos, SourceRow, error) {
	parts := lg.Partitions()
	src := SourceRow{Type: "source", Partitions: parts, FromOffset: from, Ends: make([]int64, parts)}
	type op struct {
		row *opjson.Row
		pos LogPos
		err error // an unreadable record
	}
	perPart := make([][]op, parts)
	count := 0
	for p := int32(0); p < parts; p++ {
		end, err := lg.End(ctx, p)
		if err != nil {
			return nil, nil, src, fmt.Errorf("replay: end of partition %d: %w", p, err)
		}
		src.Ends[p] = end
		for off := from; off < end; {
			ents, err := lg.Read(ctx, p, off, int(min(logReadMax, end-off)))
			if err != nil {
				return nil, nil, src, fmt.Errorf("replay: read partition %d at %d: %w", p, off, err)
			}
			for _, en := range ents {
				if en.Offset >= end {
					break
				}
				off = en.Offset + 1
				src.Records++
				row, kind := opjson.RowOf(en)
				at := LogPos{Partition: p, Offset: en.Offset}
				switch kind {
				case opjson.RowDerived:
					src.Derived++
					continue
				case opjson.RowUnreadable:
					src.Unreadable++
					perPart[p] = append(perPart[p], op{pos: at, err: engine.Errorf(engine.CodeInvalidArgument,
						"record %d/%d is not an operation this build reads", p, en.Offset)})
				default:
					perPart[p] = append(perPart[p], op{row: row, pos: at})
				}
				if count++; count > MaxLogEvents {
					return nil, nil, src, engine.Errorf(engine.CodeTooLarge,
						"replay: more than %d operations from offset %d; start later (--from-offset)", MaxLogEvents, from)
				}
			}
		}
	}
	// A k-way merge on time keeps each partition's order even where its
	// times are not monotonic.
	h := &opHeap{}
	for p := range perPart {
		if len(perPart[p]) > 0 {
			h.items = append(h.items, headOf{p: int32(p), ms: timeOf(perPart[p][0].row)})
		}
	}
	heap.Init(h)
	next := make([]int, parts)
	lines := make([]opjson.Line, 0, count)
	pos := make([]LogPos, 0, count)
	for h.Len() > 0 {
		hd := h.items[0]
		o := perPart[hd.p][next[hd.p]]
		next[hd.p]++
		if next[hd.p] < len(perPart[hd.p]) {
			h.items[0].ms = timeOf(perPart[hd.p][next[hd.p]].row)
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
		n := len(lines) + 1
		var l opjson.Line
		if o.err != nil {
			l = opjson.Line{N: n, Err: o.err}
		} else if b, err := opjson.Marshal(o.row); err != nil {
			l = opjson.Line{N: n, Op: o.row.Op, Err: engine.Errorf(engine.CodeInvalidArgument, "record %d/%d: %v", o.pos.Partition, o.pos.Offset, err)}
		} else {
			// The same codec as an export read back: a log replays as its
			// export would.
			l = opjson.Decode(n, b, app)
		}
		lines = append(lines, l)
		pos = append(pos, o.pos)
	}
	src.Operations = len(lines)
	return lines, pos, src, nil
}

// timeOf orders an unreadable record first among equals: it has no time.
func timeOf(r *opjson.Row) int64 {
	if r == nil {
		return -1
	}
	return r.TimeMs
}

type headOf struct {
	p  int32
	ms int64
}

type opHeap struct{ items []headOf }

func (h *opHeap) Len() int { return len(h.items) }
func (h *opHeap) Less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	if a.ms != b.ms {
		return a.ms < b.ms
	}
	return a.p < b.p
}
func (h *opHeap) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *opHeap) Push(x any)    { h.items = append(h.items, x.(headOf)) }
func (h *opHeap) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}
