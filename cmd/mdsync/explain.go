package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/mdsync/mdsync/adapters/explain"
	"github.com/mdsync/mdsync/adapters/logsource"
)

// runExplain is `mdsync explain --user U [--device D] [--app A]`: every
// login, eviction and kick of a user's devices, with who caused it, why,
// the policy version and the log position.
func runExplain(args []string) error {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	var src logsource.Source
	logSourceFlags(fs, &src)
	cfg := explain.Config{}
	fs.StringVar(&cfg.App, "app", "demo", "the user's app")
	fs.StringVar(&cfg.User, "user", "", "the user (required)")
	fs.StringVar(&cfg.Device, "device", "", "only rows about this login ID (as the device or as the one that ended it)")
	fs.BoolVar(&cfg.JSON, "json", false, "JSON lines instead of text")
	fs.BoolVar(&cfg.Rebuild, "rebuild", false, "build the projections from the log in a temporary directory instead of reading the data directory's")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: mdsync explain --user U [--app A] [--device LOGIN_ID] [--data DIR] [--json] [--rebuild]\n\n"+
			"Prints every login, eviction and kick of a user's devices: who ended a session, why (code and reason),\n"+
			"the evicting login's device name and extension, the policy version and the log offset (docs/operations.md).\n"+
			"It reads the data directory of a stopped or running server (a running one's from snapshots, without\n"+
			"disturbing it), or the log through Kafka with --rebuild.\n\nflags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("explain: unexpected argument %q", fs.Arg(0))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := bufio.NewWriter(os.Stdout)
	err := explain.Run(ctx, src, cfg, out, os.Stderr)
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	return err
}
