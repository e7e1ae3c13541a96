package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mdsync/mdsync/adapters/replay"
)

// runReplay is `mdsync replay [flags] [FILE]`: it reads operations as JSON
// lines (docs/operations.md), submits them one at a time through the engine
// on a fresh embedded log, and prints each decision, the final device table
// and the state digest as JSON lines on stdout.
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
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mdsync replay [flags] [FILE|-]\n\nReads operations as JSON lines (docs/operations.md) from FILE or stdin.\n\nflags:")
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
	in := io.Reader(os.Stdin)
	if len(files) == 1 && files[0] != "-" {
		f, err := os.Open(files[0])
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer f.Close()
		in = f
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := bufio.NewWriter(os.Stdout)
	err := replay.Run(ctx, cfg, in, out)
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	return err
}
