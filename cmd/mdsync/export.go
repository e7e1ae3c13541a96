package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/mdsync/mdsync/adapters/export"
	"github.com/mdsync/mdsync/adapters/logsource"
	"github.com/mdsync/mdsync/engine"
	"golang.org/x/term"
)

// logSourceFlags registers the flags of a read-only tool's log (shared by
// export and explain).
func logSourceFlags(fs *flag.FlagSet, s *logsource.Source) {
	fs.StringVar(&s.Data, "data", envOr("MDSYNC_DATA", "data"), "data directory: the embedded log is DIR/log (env MDSYNC_DATA)")
	fs.StringVar(&s.Kafka, "kafka-brokers", envOr("MDSYNC_KAFKA_BROKERS", ""), "comma-separated Kafka brokers; empty reads the embedded log (env MDSYNC_KAFKA_BROKERS)")
	fs.StringVar(&s.Topic, "kafka-topic", envOr("MDSYNC_KAFKA_TOPIC", "mdsync.log"), "the log's Kafka topic (env MDSYNC_KAFKA_TOPIC)")
	parts, _ := strconv.Atoi(envOr("MDSYNC_PARTITIONS", "0"))
	fs.IntVar(&s.Partitions, "partitions", parts, "partition count of the Kafka topic (must match it; 0 reads it from the topic; env MDSYNC_PARTITIONS)")
}

func runExport(args []string) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	var src logsource.Source
	logSourceFlags(fs, &src)
	cfg := export.Config{}
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
	lg, err := src.Open(ctx)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer lg.Close()
	var stdout io.Writer
	if cfg.Out == "-" {
		stdout = os.Stdout
	}
	sum, err := export.Run(ctx, lg, cfg, stdout)
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
