package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/mdsync/mdsync/adapters/embedlog"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/parquet-go/parquet-go"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// ---- opening the log (shared by export and explain) ----

// logSource is where a read-only tool finds the log: the embedded log of a
// data directory, or a Kafka topic.
type logSource struct {
	Data       string
	Kafka      string // comma-separated brokers; "" = embedded
	Topic      string
	Partitions int // Kafka only: the topic's partition count
}

func (s *logSource) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.Data, "data", envOr("MDSYNC_DATA", "data"), "data directory: the embedded log is DIR/log (env MDSYNC_DATA)")
	fs.StringVar(&s.Kafka, "kafka-brokers", envOr("MDSYNC_KAFKA_BROKERS", ""), "comma-separated Kafka brokers; empty reads the embedded log (env MDSYNC_KAFKA_BROKERS)")
	fs.StringVar(&s.Topic, "kafka-topic", envOr("MDSYNC_KAFKA_TOPIC", "mdsync.log"), "the log's Kafka topic (env MDSYNC_KAFKA_TOPIC)")
	parts, _ := strconv.Atoi(envOr("MDSYNC_PARTITIONS", "8"))
	fs.IntVar(&s.Partitions, "partitions", parts, "partition count of the Kafka topic (must match it; env MDSYNC_PARTITIONS)")
}

// open opens the log without creating anything: a missing embedded log or
// topic is an error, not a new empty log. The embedded log is a Pebble
// database that one process at a time may open, so a running server's log
// is read through Kafka (or after the server stopped).
func (s *logSource) open(ctx context.Context) (engine.Log, error) {
	if s.Kafka == "" {
		dir := filepath.Join(s.Data, "log")
		if !pebbleExists(dir) {
			return nil, engine.Errorf(engine.CodeNotFound, "no embedded log in %s (give --data, or --kafka-brokers)", dir)
		}
		lg, err := embedlog.Open(embedlog.Options{Dir: dir})
		if err != nil {
			return nil, fmt.Errorf("%w (is a server running on this data directory? stop it, or read the log through Kafka)", err)
		}
		return lg, nil
	}
	if s.Partitions < 1 || s.Partitions > 1024 {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "--partitions %d is outside [1,1024]", s.Partitions)
	}
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return kafkalog.Open(octx, kafkalog.Options{
		Brokers: strings.Split(s.Kafka, ","), Topic: s.Topic, Partitions: int32(s.Partitions),
	})
}

// pebbleExists reports whether dir holds a Pebble database (a manifest).
func pebbleExists(dir string) bool {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "MANIFEST-") {
			return true
		}
	}
	return false
}

// ---- the export command ----

// exportConfig is runExport's flags, so tests call export directly.
type exportConfig struct {
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

// Limits of the command line.
const (
	maxChunkRows  = 1_000_000
	exportReadMax = 1000 // entries per log read
)

func runExport(args []string) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	var src logSource
	src.flags(fs)
	cfg := exportConfig{}
	fs.StringVar(&cfg.Format, "format", "jsonl", "jsonl or parquet")
	fs.StringVar(&cfg.Out, "out", "-", "jsonl: output `FILE` (- = stdout, not resumable); parquet: output directory")
	fs.StringVar(&cfg.Position, "position", "", "position `FILE` (default OUT.position for jsonl, OUT/position.json for parquet)")
	fs.IntVar(&cfg.Partition, "partition", -1, "export only this partition (-1 = all)")
	fs.Int64Var(&cfg.FromOffset, "from-offset", 0, "first offset exported in every partition")
	fs.Int64Var(&cfg.ToOffset, "to-offset", -1, "stop before this offset in every partition (-1 = the end when the run starts)")
	since := fs.String("since", "", "only events with time >= `TIME` (RFC 3339 or Unix ms)")
	until := fs.String("until", "", "only events with time < `TIME` (RFC 3339 or Unix ms)")
	fs.Int64Var(&cfg.Limit, "limit", 0, "stop after N rows; run again with the same position file to go on (0 = no limit)")
	fs.IntVar(&cfg.ChunkRows, "chunk-rows", 10000, "rows between position updates, and per Parquet file")
	progress := fs.String("progress", "auto", "progress bar on stderr: auto (when stderr is a terminal), always, never")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mdsync export [flags]\n\nWrites the log's events as JSON lines or Parquet (docs/operations.md, docs/events.md).\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("export: unexpected argument %q", fs.Arg(0))
	}
	var err error
	if cfg.SinceMs, err = parseTimeFlag(*since); err != nil {
		return fmt.Errorf("export: --since: %w", err)
	}
	if cfg.UntilMs, err = parseTimeFlag(*until); err != nil {
		return fmt.Errorf("export: --until: %w", err)
	}
	switch *progress {
	case "always":
		cfg.Progress = os.Stderr
	case "auto":
		if term.IsTerminal(int(os.Stderr.Fd())) {
			cfg.Progress = os.Stderr
		}
	case "never":
	default:
		return fmt.Errorf("export: --progress %q is not auto, always or never", *progress)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lg, err := src.open(ctx)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer lg.Close()
	var stdout io.Writer
	if cfg.Out == "-" {
		stdout = os.Stdout
	}
	sum, err := export(ctx, lg, cfg, stdout)
	if err == nil {
		fmt.Fprintf(os.Stderr, "mdsync export: %d rows, %d records read, %d derived and %d unreadable records skipped\n",
			sum.Rows, sum.Read, sum.Derived, sum.Unreadable)
	}
	return err
}

// parseTimeFlag reads RFC 3339 or Unix milliseconds; "" is 0 (no bound).
func parseTimeFlag(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		if ms < 0 {
			return 0, engine.Errorf(engine.CodeInvalidArgument, "time %d is negative", ms)
		}
		return ms, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, engine.Errorf(engine.CodeInvalidArgument, "%q is neither RFC 3339 nor Unix milliseconds", s)
	}
	return t.UnixMilli(), nil
}

// exportSummary is what one run did.
type exportSummary struct {
	Rows       int64 // rows written
	Read       int64 // log records read
	Derived    int64 // DELIVER records skipped (copies of exported events)
	Unreadable int64 // undecodable records or kinds unknown to this build
	Done       bool  // every selected record up to the run's ends is exported
}

// exportPosition is the position file: where the next run starts, and what
// the output held when that position was recorded. It is replaced
// atomically after the data it describes is on disk, so a crash at any
// point leaves a file describing data that is durable.
type exportPosition struct {
	Version   int             `json:"version"`
	Format    string          `json:"format"`
	Selection exportSelection `json:"selection"`
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

type exportSelection struct {
	Partitions int32 `json:"partitions"` // the log's partition count
	Partition  int   `json:"partition"`
	FromOffset int64 `json:"from_offset"`
	SinceMs    int64 `json:"since_ms"`
	UntilMs    int64 `json:"until_ms"`
}

const positionVersion = 1

// export runs one export. stdout, when not nil, receives JSON lines
// without a position file (cfg.Out is ignored).
func export(ctx context.Context, lg engine.Log, cfg exportConfig, stdout io.Writer) (exportSummary, error) {
	var sum exportSummary
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
	sel := exportSelection{Partitions: parts, Partition: cfg.Partition, FromOffset: cfg.FromOffset, SinceMs: cfg.SinceMs, UntilMs: cfg.UntilMs}

	var out exportSink
	pos := &exportPosition{Version: positionVersion, Format: cfg.Format, Selection: sel, Next: make([]int64, parts)}
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
				row, kind := exportRowOf(en)
				switch {
				case kind == rowUnreadable:
					sum.Unreadable++
				case kind == rowDerived:
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

// ---- sinks ----

// exportSink receives rows; commit makes every row so far durable and
// then records pos; abort drops what was not committed.
type exportSink interface {
	write(r *exportRow) error
	commit(pos *exportPosition) error
	abort()
}

// openSink loads the position file, or starts one, and opens the output
// for appending after the recorded position.
func openSink(cfg exportConfig, posFile string, fresh *exportPosition) (exportSink, *exportPosition, error) {
	pos := fresh
	b, err := os.ReadFile(posFile)
	switch {
	case err == nil:
		pos = &exportPosition{}
		if err := json.Unmarshal(b, pos); err != nil {
			return nil, nil, engine.Errorf(engine.CodeInvalidArgument, "export: position file %s: %v", posFile, err)
		}
		if pos.Version != positionVersion || pos.Format != cfg.Format {
			return nil, nil, engine.Errorf(engine.CodeConflict, "export: position file %s is version %d format %q; this run writes version %d format %q",
				posFile, pos.Version, pos.Format, positionVersion, cfg.Format)
		}
		if pos.Selection != fresh.Selection || len(pos.Next) != len(fresh.Next) {
			return nil, nil, engine.Errorf(engine.CodeConflict, "export: position file %s selected %+v; this run selects %+v (a resumed export must select the same records)",
				posFile, pos.Selection, fresh.Selection)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, nil, fmt.Errorf("export: %w", err)
	}
	resumed := err == nil
	if cfg.Format == "jsonl" {
		s, err := openJSONL(cfg.Out, posFile, pos, resumed)
		return s, pos, err
	}
	s, err := openParquetDir(cfg.Out, posFile, pos, resumed)
	return s, pos, err
}

// writePosition replaces the position file atomically: a temporary file,
// fsync, rename, fsync of the directory.
func writePosition(path string, pos *exportPosition) error {
	b, err := json.Marshal(pos)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, append(b, '\n')); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// jsonlSink appends JSON lines to one file (or writes them to stdout).
type jsonlSink struct {
	f       *os.File // nil for stdout
	w       *bufio.Writer
	posFile string
	written int64 // bytes in the file, committed or not
}

func openJSONL(out, posFile string, pos *exportPosition, resumed bool) (*jsonlSink, error) {
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch {
	case !resumed && st.Size() > 0:
		f.Close()
		return nil, engine.Errorf(engine.CodeConflict, "export: %s is not empty and has no position file %s; remove it or give its position file", out, posFile)
	case resumed && st.Size() < pos.Bytes:
		f.Close()
		return nil, engine.Errorf(engine.CodeConflict, "export: %s has %d bytes, its position file says %d were written: the output lost data", out, st.Size(), pos.Bytes)
	}
	// Rows written after the last position update are cut: they are read
	// from the log again.
	if err := f.Truncate(pos.Bytes); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(pos.Bytes, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	s := &jsonlSink{f: f, w: bufio.NewWriterSize(f, 256<<10), posFile: posFile, written: pos.Bytes}
	if !resumed {
		// The position file exists before any data: an output without one
		// is never mistaken for an interrupted export.
		if err := writePosition(posFile, pos); err != nil {
			f.Close()
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	return s, nil
}

func (s *jsonlSink) write(r *exportRow) error {
	b, err := marshalRow(r)
	if err != nil {
		return err
	}
	n, err := s.w.Write(append(b, '\n'))
	s.written += int64(n)
	return err
}

func (s *jsonlSink) commit(pos *exportPosition) error {
	if err := s.w.Flush(); err != nil {
		return err
	}
	if s.f == nil {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	pos.Bytes = s.written
	return writePosition(s.posFile, pos)
}

func (s *jsonlSink) abort() {
	if s.f != nil {
		s.f.Close() // uncommitted bytes are cut by the next run
	}
}

// marshalRow encodes a row without HTML escaping (names are shown as given).
func marshalRow(r *exportRow) ([]byte, error) {
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, err
	}
	return []byte(strings.TrimSuffix(sb.String(), "\n")), nil
}

// parquetSink writes one Parquet file per chunk: Parquet files are
// immutable, so a chunk is written to a temporary name and renamed into
// place before the position file lists it.
type parquetSink struct {
	dir, posFile string
	tmp          *os.File
	w            *parquet.GenericWriter[parquetRow]
	rows         int
}

func openParquetDir(dir, posFile string, pos *exportPosition, resumed bool) (*parquetSink, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	listed := map[string]bool{}
	for _, f := range pos.Files {
		listed[f] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "part-") || listed[name] {
			continue
		}
		if !resumed && strings.HasSuffix(name, ".parquet") {
			return nil, engine.Errorf(engine.CodeConflict, "export: %s holds Parquet files but no position file %s; use an empty directory or give its position file", dir, posFile)
		}
		// Written after the last position update: its rows come again.
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	for f := range listed {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return nil, engine.Errorf(engine.CodeConflict, "export: %s is listed in %s but missing: the output lost data", f, posFile)
		}
	}
	if !resumed {
		if err := writePosition(posFile, pos); err != nil {
			return nil, fmt.Errorf("export: %w", err)
		}
	}
	return &parquetSink{dir: dir, posFile: posFile}, nil
}

// partName is the n-th committed file's name (1-based); names sort in
// export order.
func partName(n int) string { return fmt.Sprintf("part-%06d.parquet", n) }

func (s *parquetSink) write(r *exportRow) error {
	if s.w == nil {
		f, err := os.CreateTemp(s.dir, "part-*.tmp")
		if err != nil {
			return err
		}
		s.tmp = f
		s.w = parquet.NewGenericWriter[parquetRow](f, parquet.Compression(&parquet.Zstd))
	}
	_, err := s.w.Write([]parquetRow{parquetRowOf(r)})
	s.rows++
	return err
}

func (s *parquetSink) commit(pos *exportPosition) error {
	if s.w != nil {
		if err := s.w.Close(); err != nil {
			return err
		}
		if err := s.tmp.Sync(); err != nil {
			return err
		}
		if err := s.tmp.Close(); err != nil {
			return err
		}
		name := partName(len(pos.Files) + 1)
		if err := os.Rename(s.tmp.Name(), filepath.Join(s.dir, name)); err != nil {
			return err
		}
		if err := syncDir(s.dir); err != nil {
			return err
		}
		pos.Files = append(pos.Files, name)
		s.w, s.tmp, s.rows = nil, nil, 0
	}
	return writePosition(s.posFile, pos)
}

func (s *parquetSink) abort() {
	if s.tmp != nil {
		s.tmp.Close()
		os.Remove(s.tmp.Name())
	}
}

// ---- rows ----

type rowKind int

const (
	rowEvent rowKind = iota
	rowDerived
	rowUnreadable
)

// exportRow is one exported event (docs/events.md, "JSON lines"). Its
// operation fields are those of the replay input (docs/operations.md), so
// `mdsync replay` reads an export back; partition, offset, event_id,
// schema_version and policy_version are where the event sits in the log.
type exportRow struct {
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
	EventID       string `json:"event_id"`
	SchemaVersion uint32 `json:"schema_version"`
	Op            string `json:"op"`
	App           string `json:"app"`
	User          string `json:"user"`
	ClientOpID    string `json:"client_op_id"`
	TimeMs        int64  `json:"time_ms"`
	Admin         bool   `json:"admin,omitempty"`
	LoginID       string `json:"login_id,omitempty"`

	Platform   int32  `json:"platform,omitempty"`
	DeviceName string `json:"device_name,omitempty"`
	Extension  string `json:"extension,omitempty"`
	// AutoLogin is a bool on login and a policy name on policy_set.
	AutoLogin any    `json:"auto_login,omitempty"`
	ByLoginID string `json:"by_login_id,omitempty"`

	PolicyVersion      uint64           `json:"policy_version,omitempty"`
	Mode               string           `json:"mode,omitempty"`
	DefaultLimit       *int32           `json:"default_limit,omitempty"`
	Limits             map[string]int32 `json:"limits,omitempty"`
	TimelineMaxEntries int64            `json:"timeline_max_entries,omitempty"`
	TimelineMaxAgeMs   int64            `json:"timeline_max_age_ms,omitempty"`

	ChatType       any               `json:"chat_type,omitempty"`
	To             string            `json:"to,omitempty"`
	ClientMsgID    string            `json:"client_msg_id,omitempty"`
	ContentType    string            `json:"content_type,omitempty"`
	Body           *string           `json:"body,omitempty"`
	BodyBase64     string            `json:"body_base64,omitempty"`
	GroupID        string            `json:"group_id,omitempty"`
	ConversationID string            `json:"conversation_id,omitempty"`
	MessageID      string            `json:"message_id,omitempty"`
	Mark           int32             `json:"mark,omitempty"`
	Contact        string            `json:"contact,omitempty"`
	Ext            string            `json:"ext,omitempty"`
	Users          []string          `json:"users,omitempty"`
	Name           string            `json:"name,omitempty"`
	Reason         string            `json:"reason,omitempty"`
	Attributes     map[string]string `json:"attributes,omitempty"`
	MuteMs         int64             `json:"mute_ms,omitempty"`
	ThreadID       string            `json:"thread_id,omitempty"`
	RoomID         string            `json:"room_id,omitempty"`

	platform  bool // the login's platform is set (for Parquet)
	autoLogin bool
	bodyRaw   []byte
}

// chatTypeJSON is a chat type's JSON name ("user", "group"...), or its
// number when this build does not know it.
func chatTypeJSON(c pb.ChatType) any {
	if c == 0 {
		return nil
	}
	if _, ok := pb.ChatType_name[int32(c)]; ok {
		return strings.ToLower(strings.TrimPrefix(c.String(), "CHAT_TYPE_"))
	}
	return int32(c)
}

// exportRowOf maps one log record to a row. DELIVER records are fan-out
// copies of events already in the log and are not exported.
func exportRowOf(en engine.Entry) (*exportRow, rowKind) {
	ev, err := engine.Decode(en.Value)
	if err != nil {
		return nil, rowUnreadable
	}
	ki, known := engine.LookupKind(ev.Kind)
	if !known || ev.Actor == nil {
		return nil, rowUnreadable
	}
	if ki.Category == engine.CatDerived {
		return nil, rowDerived
	}
	r := &exportRow{
		Partition: en.Partition, Offset: en.Offset, EventID: ev.EventId, SchemaVersion: ev.SchemaVersion,
		Op: ki.Name, App: ev.App, User: ev.Actor.User, ClientOpID: ev.ClientOpId, TimeMs: ev.TimeUnixMs,
		Admin: ev.Actor.Admin, LoginID: ev.Actor.LoginId,
	}
	switch pl := ev.Payload.(type) {
	case *pb.Event_Login:
		l := pl.Login
		r.LoginID, r.Platform, r.DeviceName, r.Extension = l.LoginId, l.Platform, l.DeviceName, l.Extension
		r.platform, r.autoLogin = true, l.AutoLogin
		if l.AutoLogin {
			r.AutoLogin = true
		}
	case *pb.Event_KickDevice:
		r.ByLoginID, r.LoginID = ev.Actor.LoginId, pl.KickDevice.LoginId
	case *pb.Event_PolicySet:
		ps := pl.PolicySet
		r.PolicyVersion = ps.Version
		r.Mode = "multi"
		if ps.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE {
			r.Mode = "single"
		}
		dl := ps.DefaultLimit
		r.DefaultLimit = &dl
		if ps.AutoLogin == pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT {
			r.AutoLogin = "keep_current"
		} else {
			r.AutoLogin = "kick_oldest"
		}
		if len(ps.Limits) > 0 {
			r.Limits = map[string]int32{}
			for _, l := range ps.Limits {
				r.Limits[strconv.Itoa(int(l.Platform))] = l.Limit
			}
		}
		r.TimelineMaxEntries, r.TimelineMaxAgeMs = ps.TimelineMaxEntries, ps.TimelineMaxAgeMs
	case *pb.Event_Message:
		m := pl.Message
		r.ChatType, r.To, r.ClientMsgID, r.ContentType, r.GroupID = chatTypeJSON(m.ChatType), m.To, m.ClientMsgId, m.ContentType, m.GroupId
		r.bodyRaw = m.Body
		if len(m.Body) > 0 {
			if utf8.Valid(m.Body) {
				s := string(m.Body)
				r.Body = &s
			} else {
				r.BodyBase64 = base64.StdEncoding.EncodeToString(m.Body)
			}
		}
	case *pb.Event_Receipt:
		r.ChatType, r.ConversationID, r.MessageID = chatTypeJSON(pl.Receipt.ChatType), pl.Receipt.ConversationId, pl.Receipt.MessageId
	case *pb.Event_Conversation:
		c := pl.Conversation
		r.ChatType, r.ConversationID, r.Mark = chatTypeJSON(c.ChatType), c.ConversationId, c.Mark
	case *pb.Event_Contact:
		r.Contact, r.Ext = pl.Contact.User, pl.Contact.Ext
	case *pb.Event_Group:
		g := pl.Group
		r.GroupID, r.Users, r.Name, r.Reason, r.MuteMs = g.GroupId, g.Users, g.Name, g.Reason, g.MuteMs
		if len(g.Attributes) > 0 {
			r.Attributes = map[string]string{}
			for _, a := range g.Attributes {
				r.Attributes[a.Key] = a.Value
			}
		}
	case *pb.Event_Thread:
		t := pl.Thread
		r.ThreadID, r.GroupID, r.Name, r.Users, r.MessageID = t.ThreadId, t.GroupId, t.Name, t.Users, t.MessageId
	case *pb.Event_Chatroom:
		r.RoomID = pl.Chatroom.RoomId
	}
	return r, rowEvent
}

// parquetRow is the Parquet schema of an export (docs/events.md,
// "Parquet"): the JSON lines fields as columns, null where an operation
// does not use one. auto_login is split by type: a login's is the boolean
// auto_login, a policy's the string policy_auto_login.
type parquetRow struct {
	Partition     int32  `parquet:"partition"`
	Offset        int64  `parquet:"offset"`
	EventID       string `parquet:"event_id"`
	SchemaVersion int32  `parquet:"schema_version"`
	Op            string `parquet:"op,dict"`
	App           string `parquet:"app,dict"`
	User          string `parquet:"user"`
	ClientOpID    string `parquet:"client_op_id"`
	TimeMs        int64  `parquet:"time_ms"`
	Admin         bool   `parquet:"admin"`
	LoginID       string `parquet:"login_id,optional"`

	Platform        *int32 `parquet:"platform,optional"`
	DeviceName      string `parquet:"device_name,optional"`
	Extension       string `parquet:"extension,optional"`
	AutoLogin       *bool  `parquet:"auto_login,optional"`
	ByLoginID       string `parquet:"by_login_id,optional"`
	PolicyVersion   *int64 `parquet:"policy_version,optional"`
	Mode            string `parquet:"mode,optional"`
	DefaultLimit    *int32 `parquet:"default_limit,optional"`
	PolicyAutoLogin string `parquet:"policy_auto_login,optional"`
	// LimitsJSON is the limits object as JSON text ({"1":2}), as in JSON lines.
	LimitsJSON         string `parquet:"limits_json,optional"`
	TimelineMaxEntries *int64 `parquet:"timeline_max_entries,optional"`
	TimelineMaxAgeMs   *int64 `parquet:"timeline_max_age_ms,optional"`

	ChatType       string   `parquet:"chat_type,optional,dict"`
	To             string   `parquet:"to,optional"`
	ClientMsgID    string   `parquet:"client_msg_id,optional"`
	ContentType    string   `parquet:"content_type,optional"`
	Body           []byte   `parquet:"body,optional"`
	GroupID        string   `parquet:"group_id,optional"`
	ConversationID string   `parquet:"conversation_id,optional"`
	MessageID      string   `parquet:"message_id,optional"`
	Mark           *int32   `parquet:"mark,optional"`
	Contact        string   `parquet:"contact,optional"`
	Ext            string   `parquet:"ext,optional"`
	Users          []string `parquet:"users,list"`
	Name           string   `parquet:"name,optional"`
	Reason         string   `parquet:"reason,optional"`
	// AttributesJSON is the attributes object as JSON text.
	AttributesJSON string `parquet:"attributes_json,optional"`
	MuteMs         *int64 `parquet:"mute_ms,optional"`
	ThreadID       string `parquet:"thread_id,optional"`
	RoomID         string `parquet:"room_id,optional"`
}

func parquetRowOf(r *exportRow) parquetRow {
	q := parquetRow{
		Partition: r.Partition, Offset: r.Offset, EventID: r.EventID, SchemaVersion: int32(r.SchemaVersion),
		Op: r.Op, App: r.App, User: r.User, ClientOpID: r.ClientOpID, TimeMs: r.TimeMs, Admin: r.Admin,
		LoginID: r.LoginID, DeviceName: r.DeviceName, Extension: r.Extension, ByLoginID: r.ByLoginID,
		Mode: r.Mode, DefaultLimit: r.DefaultLimit,
		To: r.To, ClientMsgID: r.ClientMsgID, ContentType: r.ContentType, Body: r.bodyRaw,
		GroupID: r.GroupID, ConversationID: r.ConversationID, MessageID: r.MessageID,
		Contact: r.Contact, Ext: r.Ext, Users: r.Users, Name: r.Name, Reason: r.Reason,
		ThreadID: r.ThreadID, RoomID: r.RoomID,
	}
	if r.platform {
		p, a := r.Platform, r.autoLogin
		q.Platform, q.AutoLogin = &p, &a
	}
	if r.Op == "policy_set" {
		v := int64(r.PolicyVersion)
		me, ma := r.TimelineMaxEntries, r.TimelineMaxAgeMs
		q.PolicyVersion, q.TimelineMaxEntries, q.TimelineMaxAgeMs = &v, &me, &ma
		q.PolicyAutoLogin, _ = r.AutoLogin.(string)
		q.LimitsJSON = sortedJSON(r.Limits)
	}
	switch c := r.ChatType.(type) {
	case string:
		q.ChatType = c
	case int32:
		q.ChatType = strconv.Itoa(int(c))
	}
	if r.Op == "conversation_mark" || r.Op == "conversation_unmark" {
		m := r.Mark
		q.Mark = &m
	}
	if r.Op == "group_add_mute" {
		m := r.MuteMs
		q.MuteMs = &m
	}
	if len(r.Attributes) > 0 {
		q.AttributesJSON = sortedJSON(r.Attributes)
	}
	return q
}

// sortedJSON encodes a map as JSON text; encoding/json sorts map keys.
func sortedJSON[V any](m map[string]V) string {
	if m == nil {
		return "{}"
	}
	b, _ := json.Marshal(m)
	return string(b)
}
