// Command mdsync is the mdsync server and its tools.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// command is one subcommand: dispatch and `mdsync --help` both read the
// table below, so a command listed there is a command that runs.
type command struct {
	name    string
	summary string
	// run parses its own flags. A --help returns flag.ErrHelp after the
	// usage was printed.
	run func(args []string) error
}

// commands is the command table, in the order --help lists it.
var commands = []command{
	{"serve", "run the server: embedded log or Kafka, WebSocket gateway, REST API (README.md)", runServe},
	{"connect", "log one device in over the WebSocket protocol and print what it receives (docs/protocol.md)", runConnect},
	{"users", "admin: add, passwd, remove, token — over a server's REST API", cliGroup("users")},
	{"devices", "list, kick, kick-all a user's devices over a server's REST API", cliGroup("devices")},
	{"policy", "admin: get or set an app's device policy over a server's REST API", cliGroup("policy")},
	{"explain", "every login, eviction and kick of a user's devices, with who, why, policy version and offset", runExplain},
	{"export", "write the log's events as JSON lines or Parquet, resumably (docs/operations.md)", runExport},
	{"replay", "replay operations from JSON lines and print decisions and devices (docs/operations.md)", runReplay},
	{"stress", "submit random session operations (used by the crash test)", runStress},
}

// cliGroup runs an admin command group (cli.go) on stdin and stdout.
func cliGroup(group string) func([]string) error {
	return func(args []string) error { return runCLI(group, args, os.Stdin, os.Stdout) }
}

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// Exit statuses: 0 done (or help asked for), 1 the command failed, 2 the
// command line is wrong (no or an unknown command, bad flags).
func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help", "help":
		if name == "help" && len(rest) > 0 {
			// `mdsync help CMD` is `mdsync CMD --help`.
			name, rest = rest[0], []string{"--help"}
			break
		}
		usage(os.Stdout)
		return 0
	}
	cmd, ok := lookup(name)
	if !ok {
		fmt.Fprintf(os.Stderr, "mdsync: unknown command %q\n\n", name)
		usage(os.Stderr)
		return 2
	}
	if helpRequested(rest) {
		// Help asked for is the command's output, not an error: the flag
		// package prints usage on os.Stderr unless a FlagSet says otherwise.
		stderr := os.Stderr
		os.Stderr = os.Stdout
		defer func() { os.Stderr = stderr }()
	}
	err := cmd.run(rest)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case isUsageError(err):
		fmt.Fprintln(os.Stderr, "mdsync "+name+":", err)
		return 2
	}
	fmt.Fprintln(os.Stderr, "mdsync:", err)
	return 1
}

// helpRequested reports whether a command's flags ask for help (-h, -help,
// --help before a "--").
func helpRequested(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help", "--h":
			return true
		}
	}
	return false
}

// isUsageError reports a command line the flag package refused.
func isUsageError(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "flag provided but not defined") || strings.HasPrefix(s, "invalid value ") ||
		strings.HasPrefix(s, "flag needs an argument") || strings.HasPrefix(s, "invalid boolean")
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: mdsync <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\n`mdsync <command> --help` prints a command's flags; `mdsync users --help` (devices, policy) lists its subcommands.")
}
