// Command mdsync-bench is mdsync's load generator: it simulates users with
// several devices each over real WebSocket connections (the Go SDK in
// client/), against an `mdsync serve` it starts itself or one it is given,
// and reports throughput, HDR latency percentiles, server RSS and
// goroutines, and a same-run baseline ratio, as JSON, Markdown and PNG
// plots. Scenarios are in benchmarks/scenarios; results in
// benchmarks/RESULTS.md.
//
//	mdsync-bench run --scenario benchmarks/scenarios/smoke.json --out /tmp/smoke
//	mdsync-bench report --out DIR REPORT.json   # Markdown and plots again from a saved report
//	mdsync-bench echo --addr 127.0.0.1:9000     # the baseline server alone
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	if err := dispatch(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mdsync-bench:", err)
		os.Exit(1)
	}
}

func dispatch(args []string) error {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runBench(args)
	case "report":
		return runReport(args)
	case "echo":
		return runEcho(args)
	}
	return fmt.Errorf("unknown command %q (run, report, echo)", cmd)
}

// runReport writes the Markdown and the plots of a saved JSON report.
func runReport(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	out := fs.String("out", ".", "directory for the Markdown and the PNGs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("report: give one JSON report")
	}
	b, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	return writeOutputs(&r, *out, false, os.Stdout)
}

// writeOutputs writes NAME.md and the plots (and NAME.json when withJSON)
// into dir, and the Markdown to term when it is not nil.
func writeOutputs(r *Report, dir string, withJSON bool, term io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	if withJSON {
		errs = append(errs, r.WriteJSON(filepath.Join(dir, r.Scenario.Name+".json")))
	}
	f, err := os.Create(filepath.Join(dir, r.Scenario.Name+".md"))
	if err != nil {
		return err
	}
	errs = append(errs, r.WriteMarkdown(f), f.Close())
	files, err := WritePlots(r, dir)
	errs = append(errs, err)
	if term != nil {
		errs = append(errs, r.WriteMarkdown(term))
		for _, f := range files {
			fmt.Fprintln(term, "wrote", f)
		}
	}
	return errors.Join(errs...)
}

// runEcho serves the baseline echo server until interrupted.
func runEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	e, err := StartEchoServer(logger)
	if err != nil {
		return err
	}
	logger.Info("echo baseline serving", "url", "ws://"+e.Addr+"/v1/ws")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return e.Close()
}
