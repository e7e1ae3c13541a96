// Package export is `mdsync export`: a resumable export of the log's
// events as JSON lines (opjson rows) or Parquet files, with a position file
// replaced atomically after the data it describes is durable.
package export

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	"github.com/schollz/progressbar/v3"
)

// Config is one export run (the flags of `mdsync export`).
type Config struct {
	Format   string // "jsonl" or "parquet"
	Out      string // jsonl: file or "-"; parquet: directory
	Position string // position file; "" = the default for Out
	// Selection. It is stored in the position file: a resumed export must
	// select the same records.
	Partition  int   // -1 = every partition
	FromOffset int64 // first offset of every partition
	ToOffset   int64 // < 0: each partition's end when the run starts
	SinceMs    int64 // event time >= SinceMs
	UntilMs    int64 // event time < UntilMs; <= 0: no bound
	// Limit stops the run after this many rows (0 = none); a later run
	// with the same position file goes on from there.
	Limit int64
	// ChunkRows is how many rows are written between two position updates
	// (and per Parquet file).
	ChunkRows int
	Progress  io.Writer // nil = no progress bar
}

// Limits of a run.
const (
	maxChunkRows  = 1_000_000
	exportReadMax = 1000 // entries per log read
)

// Summary is what one run did.
type Summary struct {
	Rows       int64 // rows written
	Read       int64 // log records read
	Derived    int64 // copies of exported events skipped (DELIVER, POLICY_SET on partitions > 0)
	Unreadable int64 // undecodable records or kinds unknown to this build
	Done       bool  // every selected record up to the run's ends is exported
}

// position is the position file: where the next run starts, and what
// the output held when that position was recorded. It is replaced
// atomically after the data it describes is on disk, so a crash at any
// point leaves a file describing data that is durable.
type position struct {
	Version   int       `json:"version"`
	Format    string    `json:"format"`
	Selection selection `json:"selection"`
	// Next is the next offset to read, per partition of the log.
	Next []int64 `json:"next"`
	Rows int64   `json:"rows"`
	// Bytes is the length of the JSON lines file; anything past it was
	// written after the last position update and is cut on resume.
	Bytes int64 `json:"bytes,omitempty"`
	// Files are the committed Parquet files, in order; any other part file
	// in the directory was written after the last update and is removed.
	Files []string `json:"files,omitempty"`
}

type selection struct {
	Partitions int32 `json:"partitions"` // the log's partition count
	Partition  int   `json:"partition"`
	FromOffset int64 `json:"from_offset"`
	SinceMs    int64 `json:"since_ms"`
	UntilMs    int64 `json:"until_ms"`
}

const positionVersion = 1

// export runs one export. stdout, when not nil, receives JSON lines
// without a position file (cfg.Out is ignored).
func Run(ctx context.Context, lg engine.Log, cfg Config, stdout io.Writer) (Summary, error) {
	var sum Summary
	parts := lg.Partitions()
	if cfg.ChunkRows == 0 {
		cfg.ChunkRows = 10000
	}
	switch {
	case cfg.Format != "jsonl" && cfg.Format != "parquet":
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: --format %q is not jsonl or parquet", cfg.Format)
	case cfg.Format == "parquet" && (stdout != nil || cfg.Out == "" || cfg.Out == "-"):
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: parquet needs --out DIR")
	case stdout == nil && (cfg.Out == "" || cfg.Out == "-"):
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: --out is required")
	case cfg.Partition < -1 || cfg.Partition >= int(parts):
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: --partition %d is outside [-1,%d)", cfg.Partition, parts)
	case cfg.FromOffset < 0:
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: --from-offset %d is negative", cfg.FromOffset)
	case cfg.ChunkRows < 1 || cfg.ChunkRows > maxChunkRows:
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: --chunk-rows %d is outside [1,%d]", cfg.ChunkRows, maxChunkRows)
	case cfg.Limit < 0:
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: --limit %d is negative", cfg.Limit)
	case cfg.SinceMs < 0 || cfg.UntilMs < 0 || (cfg.UntilMs > 0 && cfg.UntilMs <= cfg.SinceMs):
		return sum, engine.Errorf(engine.CodeInvalidArgument, "export: empty or negative time range [%d,%d)", cfg.SinceMs, cfg.UntilMs)
	}
	sel := selection{Partitions: parts, Partition: cfg.Partition, FromOffset: cfg.FromOffset, SinceMs: cfg.SinceMs, UntilMs: cfg.UntilMs}

	var out sink
	pos := &position{Version: positionVersion, Format: cfg.Format, Selection: sel, Next: make([]int64, parts)}
	for p := range pos.Next {
		pos.Next[p] = cfg.FromOffset
	}
	if stdout != nil {
		out = &jsonlSink{w: bufio.NewWriterSize(stdout, 256<<10)}
	} else {
		posFile := cfg.Position
		if posFile == "" {
			posFile = cfg.Out + ".position"
			if cfg.Format == "parquet" {
				posFile = filepath.Join(cfg.Out, "position.json")
			}
		}
		var err error
		if out, pos, err = openSink(cfg, posFile, pos); err != nil {
			return sum, err
		}
	}
	defer out.abort()

	// The run's ends: the log's end when it starts, so a run terminates on
	// a growing log; the next run picks up what was appended meanwhile.
	ends := make([]int64, parts)
	var total int64
	for p := range ends {
		if cfg.Partition >= 0 && p != cfg.Partition {
			continue
		}
		end, err := lg.End(ctx, int32(p))
		if err != nil {
			return sum, fmt.Errorf("export: end of partition %d: %w", p, err)
		}
		if cfg.ToOffset >= 0 {
			end = min(end, cfg.ToOffset)
		}
		ends[p] = end
		total += max(0, end-pos.Next[p])
	}
	var bar *progressbar.ProgressBar
	if cfg.Progress != nil {
		bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(cfg.Progress),
			progressbar.OptionSetDescription("export"), progressbar.OptionShowCount(),
			progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
		defer bar.Exit()
	}

	inChunk := 0
	commit := func() error {
		if err := out.commit(pos); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		inChunk = 0
		return nil
	}
	for p := int32(0); p < parts; p++ {
		for pos.Next[p] < ends[p] {
			if cfg.Limit > 0 && sum.Rows >= cfg.Limit {
				return sum, commit()
			}
			n := min(int64(exportReadMax), ends[p]-pos.Next[p])
			ents, err := lg.Read(ctx, p, pos.Next[p], int(n))
			if err != nil {
				return sum, fmt.Errorf("export: read partition %d at %d: %w", p, pos.Next[p], err)
			}
			for _, en := range ents {
				if en.Offset >= ends[p] {
					break
				}
				sum.Read++
				row, kind := opjson.RowOf(en)
				switch {
				case kind == opjson.RowUnreadable:
					sum.Unreadable++
				case kind == opjson.RowDerived:
					sum.Derived++
				case row.TimeMs < cfg.SinceMs || (cfg.UntilMs > 0 && row.TimeMs >= cfg.UntilMs):
				default:
					if err := out.write(row); err != nil {
						return sum, fmt.Errorf("export: %w", err)
					}
					sum.Rows++
					pos.Rows++
					inChunk++
				}
				pos.Next[p] = en.Offset + 1
				if bar != nil {
					bar.Add(1)
				}
				if inChunk >= cfg.ChunkRows || (cfg.Limit > 0 && sum.Rows >= cfg.Limit) {
					if err := commit(); err != nil {
						return sum, err
					}
					if cfg.Limit > 0 && sum.Rows >= cfg.Limit {
						return sum, nil
					}
				}
			}
		}
	}
	sum.Done = true
	if bar != nil {
		bar.Finish()
	}
	return sum, commit()
}
