package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mdsync/mdsync/adapters/logsource"
	"github.com/mdsync/mdsync/adapters/replay"
)

// runReplay is `mdsync replay [flags] [FILE]`: it reads operations as JSON
// lines (docs/operations.md), or from a live log (a data directory's, a
// Kafka topic's), submits them one at a time through the engine on a fresh
// embedded log, and prints each decision, the final device table and the
// state digest as JSON lines on stdout.
func runReplay(args []string) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	cfg := replay.Config{}
	fs.StringVar(&cfg.Dir, "data", "", "keep the replayed log and projections in `DIR` (must not hold a log yet); default a temporary directory")
	parts := fs.Int("partitions", 1, "partitions of the replay log; with 1, offsets are one global sequence")
	fs.StringVar(&cfg.App, "app", "demo", "app of lines that name none")
	fs.BoolVar(&cfg.Verify, "verify", false, "rebuild the projections from the log and compare digests")
	fs.Int64Var(&cfg.At, "at", -1, "print the device table as of `OFFSET` (inclusive; per partition) instead of the final one")
	policyFile := fs.String("policy", "", "replay a second time under the policy in `FILE` and print how sessions ended differently")
	fs.BoolVar(&cfg.KeepGoing, "keep-going", true, "report an invalid line and go on; false stops at the first one")
	var src logsource.Source
	fs.StringVar(&src.Data, "from-data", "", "replay the log of the data directory `DIR` (a stopped or running server's; a running one's is read from a snapshot, without disturbing it)")
	fs.StringVar(&src.Kafka, "kafka-brokers", "", "replay the log in a Kafka topic: comma-separated brokers")
	fs.StringVar(&src.Topic, "topic", "mdsync.log", "with --kafka-brokers: the log's topic")
	fs.StringVar(&src.Topic, "kafka-topic", "mdsync.log", "the same as --topic (the spelling of export and explain)")
	fs.IntVar(&src.Partitions, "topic-partitions", 0, "with --kafka-brokers: the topic's partition count (0: read from the topic)")
	fromOffset := fs.Int64("from-offset", 0, "with --from-data or --kafka-brokers: the first offset replayed of every partition")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mdsync replay [flags] [FILE|-]\n"+
			"       mdsync replay --from-data DIR | --kafka-brokers HOST:PORT [--topic T] [--from-offset N] [flags]\n\n"+
			"Reads operations as JSON lines (docs/operations.md) from FILE or stdin, or the operations of a live\n"+
			"log from an offset on (merged across partitions by time), and replays them on a fresh log: with\n"+
			"--policy FILE, what the history would have been under another policy (what-if); with --at, the\n"+
			"device table as of an offset (time travel).\n\nflags:")
		fs.PrintDefaults()
	}
	// Flags may come before or after the file name.
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) > 1 {
		return fmt.Errorf("replay: one input file at most, got %d", len(files))
	}
	if *parts < 1 || *parts > 1024 {
		return fmt.Errorf("replay: --partitions %d is outside [1,1024]", *parts)
	}
	cfg.Partitions = int32(*parts)
	if *policyFile != "" {
		b, err := os.ReadFile(*policyFile)
		if err != nil {
			return fmt.Errorf("replay: --policy: %w", err)
		}
		if cfg.Policy, err = replay.ParsePolicy(b, cfg.App); err != nil {
			return fmt.Errorf("replay: --policy %s: %w", *policyFile, err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if src.Data != "" || src.Kafka != "" {
		if len(files) > 0 || (src.Data != "" && src.Kafka != "") {
			return errors.New("replay: give one input: a FILE, --from-data or --kafka-brokers")
		}
		src.TempDir = os.TempDir()
		lg, err := src.Open(ctx)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer lg.Close()
		desc := "embedded log of " + src.Data
		if src.Kafka != "" {
			desc = "Kafka topic " + src.Topic + " at " + src.Kafka
		}
		err = replay.RunLog(ctx, cfg, lg, *fromOffset, desc, out)
		if ferr := out.Flush(); err == nil {
			err = ferr
		}
		return err
	}
	in := io.Reader(os.Stdin)
	if len(files) == 1 && files[0] != "-" {
		f, err := os.Open(files[0])
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer f.Close()
		in = f
	}
	err := replay.Run(ctx, cfg, in, out)
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	return err
}
