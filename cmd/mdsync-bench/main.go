// Command mdsync-bench is mdsync's load generator: it simulates users with
// several devices each over real WebSocket connections (the Go SDK in
// client/), against an `mdsync serve` it starts itself or one it is given,
// and reports throughput, HDR latency percentiles, server RSS and
// goroutines, and a same-run baseline ratio, as JSON, Markdown and PNG
// plots. Scenarios are in benchmarks/scenarios; results in
// benchmarks/RESULTS.md. The load generator itself is the package
// benchmarks/loadgen; this command parses flags and calls it.
//
//	mdsync-bench run --scenario benchmarks/scenarios/smoke.json --out /tmp/smoke
//	mdsync-bench report --out DIR REPORT.json   # Markdown and plots again from a saved report
//	mdsync-bench echo                           # the baseline server alone (prints its address)
//	mdsync-bench trace --history run.jsonl --speed 10 --out /tmp/trace
//
// trace plays a recorded history (`mdsync export` JSON lines, or the
// operations JSON lines `mdsync replay` reads) against a server as the
// devices that made it: users registered first, each login a connect of
// an SDK device with its recorded login ID and platform, every other
// operation sent on its device's connection (admin ones over REST), each
// recorded disconnect a close of that connection, in log order per device
// and wherever the recorded order decided an outcome,
// paced by the recorded times ÷ --speed (max: as fast as a bounded window
// allows). It reports what a scenario run does, plus the operations played
// and refused per kind.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/mdsync/mdsync/benchmarks/loadgen"
)

func main() {
	if err := dispatch(os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "mdsync-bench:", err)
		os.Exit(1)
	}
}

// usage lists the commands; each has its own --help.
const usage = `usage: mdsync-bench [command] [flags]

commands:
  run     run a scenario (the default): benchmarks/scenarios/*.json
  trace   play a recorded history (mdsync export JSON lines, or replay's) as the devices that made it, at --speed 1, 10, N or max
  report  write the Markdown and plots again from a saved JSON report
  echo    serve the baseline echo server alone

` + "`mdsync-bench <command> --help`" + ` prints a command's flags.
`

func dispatch(args []string) error {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Print(usage)
		return nil
	}
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
	case "trace":
		return runTrace(args)
	}
	return fmt.Errorf("unknown command %q (run, report, echo, trace)", cmd)
}

// runBench runs a scenario and writes its report.
func runBench(args []string) error {
	var f loadgen.Options
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	scenario := fs.String("scenario", "benchmarks/scenarios/smoke.json", "scenario file")
	out := fs.String("out", "bench-out", "directory for NAME.json, NAME.md and the PNG plots")
	serverFlags(fs, &f)
	cpuProfile := fs.String("cpuprofile", "", "write the benchmark process's CPU profile here (is the load generator the bottleneck?)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	sc, err := loadgen.LoadScenario(*scenario)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rep, err := loadgen.Run(ctx, sc, f, logger)
	if rep != nil {
		rep.Command = "mdsync-bench run " + strings.Join(args, " ")
		if werr := loadgen.WriteOutputs(rep, *out, true, os.Stdout); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return err
}

// serverFlags registers the flags that name the server a run loads.
func serverFlags(fs *flag.FlagSet, f *loadgen.Options) {
	fs.StringVar(&f.Addr, "addr", "", "host:port of a running mdsync serve; empty: build and start one on a temp data dir")
	fs.StringVar(&f.AdminToken, "admin-token", "", "admin token of the server at --addr")
	fs.StringVar(&f.AdminTokenFile, "admin-token-file", "", "file holding it (DATA/admin-token)")
	fs.IntVar(&f.ServerPID, "server-pid", 0, "pid of the server at --addr, to sample its RSS (0: not sampled)")
	fs.StringVar(&f.KafkaBrokers, "kafka-brokers", "", "start the server on these Kafka brokers instead of the embedded log")
	fs.StringVar(&f.MdsyncBin, "mdsync-bin", "", "mdsync binary to start; empty: go build ./cmd/mdsync")
	fs.IntVar(&f.Partitions, "partitions", 0, "partitions of the started server's log (0: serve's default)")
	fs.BoolVar(&f.Quiet, "quiet", false, "no progress bars")
	fs.Func("serve-arg", "an extra argument for the started mdsync serve (repeat the flag for several), e.g. --serve-arg=--ws-send-queue=64", func(v string) error {
		f.ServeArgs = append(f.ServeArgs, v)
		return nil
	})
}

// runTrace plays a recorded history and writes its report.
func runTrace(args []string) error {
	var f loadgen.Options
	var to loadgen.TraceOptions
	fs := flag.NewFlagSet("trace", flag.ContinueOnError)
	history := fs.String("history", "", "recorded history `FILE`: mdsync export JSON lines, or the operations JSON lines mdsync replay reads")
	speed := fs.String("speed", "1", "speed-up over the recorded times: 1, 10, any factor, or max (as fast as the window allows)")
	fs.IntVar(&to.Window, "window", 256, "operations in flight at most")
	fs.StringVar(&to.Name, "name", "trace", "names the report files: NAME.json, NAME.md, NAME-*.png")
	out := fs.String("out", "bench-out", "directory for the report files")
	serverFlags(fs, &f)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *history == "" || fs.NArg() > 0 {
		return errors.New("trace: give --history FILE (and no arguments)")
	}
	var err error
	if to.Speed, err = loadgen.ParseSpeed(*speed); err != nil {
		return fmt.Errorf("trace: --%w", err)
	}
	tr, err := loadgen.LoadTrace(*history)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rep, err := loadgen.RunTrace(ctx, tr, to, f, logger)
	if rep != nil {
		rep.Command = "mdsync-bench trace " + strings.Join(args, " ")
		if werr := loadgen.WriteOutputs(rep, *out, true, os.Stdout); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return err
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
	var r loadgen.Report
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	return loadgen.WriteOutputs(&r, *out, false, os.Stdout)
}

// runEcho serves the baseline echo server until interrupted.
func runEcho(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	e, err := loadgen.StartEchoServer(logger)
	if err != nil {
		return err
	}
	logger.Info("echo baseline serving", "url", "ws://"+e.Addr+"/v1/ws")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return e.Close()
}
