// Command mdsync is the mdsync server and its tools.
package main

import (
	"fmt"
	"os"
)

// commands maps a subcommand to its entry point. Each parses its own flags.
var commands = map[string]func(args []string) error{
	"connect": runConnect,
	"export":  runExport,
	"replay":  runReplay,
	"serve":   runServe,
	"stress":  runStress,
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		usage()
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "mdsync:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mdsync <command> [flags]\n\ncommands:\n  explain  every login, eviction and kick of a user's devices, with who, why, policy version and offset\n  export   write the log's events as JSON lines or Parquet, resumably (docs/operations.md)\n  replay   replay operations from JSON lines and print decisions and devices (docs/operations.md)\n  stress   submit random session operations (used by the crash test)\n  users, devices, policy   admin commands over a server's REST API (run one without arguments for usage)")
}
