package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mdsync/mdsync/adapters/admincli"
	"github.com/mdsync/mdsync/client"
)

const cliUsage = `usage:
  mdsync users add      --app A --user U --password P          (admin)
  mdsync users passwd   --app A --user U --new-password N      (admin, or --password OLD)
  mdsync users remove   --app A --user U                       (admin)
  mdsync users token    --app A --user U [--ttl 24h]           (admin, or --password)
  mdsync devices list     --app A --user U                     (admin, --password or --token)
  mdsync devices kick     --app A --user U --login-id ID       (admin, --password or --token)
  mdsync devices kick-all --app A --user U                     (admin, --password or --token)
  mdsync policy get --app A                                    (admin)
  mdsync policy set --app A [--file policy.json|-] [--mode multi|single] [--default-limit N]
                    [--limit PLATFORM=N,...] [--auto-login kick-oldest|keep-current]   (admin)

common flags: --server URL (env MDSYNC_SERVER, default http://127.0.0.1:8080),
  --admin-token T (env MDSYNC_ADMIN_TOKEN; else read DATA/admin-token, --data DATA,
  env MDSYNC_DATA, default ./data), --json (machine-readable output)
`

// groupUsage is the part of cliUsage about one command group, and the
// common flags.
func groupUsage(group string) string {
	var b strings.Builder
	b.WriteString("usage:\n")
	lines := strings.Split(cliUsage, "\n")
	in := false
	for _, l := range lines[1:] {
		switch {
		case strings.HasPrefix(l, "  mdsync "):
			in = strings.HasPrefix(l, "  mdsync "+group+" ")
		case l == "":
			in = false
			b.WriteString("\n")
		case strings.HasPrefix(l, "common flags"):
			in = true
		}
		if in {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// runCLI runs `mdsync <group> <verb> [flags]`. Failures with a code come
// back as *client.Error, printed by main as "error <code>: <message>".
// `mdsync <group> --help` and `mdsync <group> <verb> --help` print the
// usage on out and return flag.ErrHelp.
func runCLI(group string, args []string, stdin io.Reader, out io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(out, groupUsage(group))
		return flag.ErrHelp
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return errors.New("missing subcommand\n" + groupUsage(group))
	}
	verb := args[0]
	if !strings.Contains(cliUsage, "  mdsync "+group+" "+verb+" ") {
		return fmt.Errorf("unknown command %q\n%s", group+" "+verb, groupUsage(group))
	}
	var f admincli.Flags
	var server string
	var timeout time.Duration
	fs := flag.NewFlagSet(group+" "+verb, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&server, "server", envOr("MDSYNC_SERVER", "http://127.0.0.1:8080"), "server base URL")
	fs.StringVar(&f.App, "app", envOr("MDSYNC_APP", ""), "app ID")
	fs.StringVar(&f.AdminToken, "admin-token", envOr("MDSYNC_ADMIN_TOKEN", ""), "admin bearer token")
	fs.StringVar(&f.Data, "data", envOr("MDSYNC_DATA", "data"), "data directory holding admin-token")
	fs.StringVar(&f.User, "user", "", "user ID")
	fs.StringVar(&f.Password, "password", "", "the user's password (user-credential calls; users add: the new user's password)")
	fs.StringVar(&f.Token, "token", "", "a user token")
	fs.BoolVar(&f.JSON, "json", false, "JSON output")
	fs.DurationVar(&timeout, "timeout", 30*time.Second, "request timeout")
	fs.StringVar(&f.NewPassword, "new-password", "", "users passwd: the new password")
	fs.StringVar(&f.LoginID, "login-id", "", "devices kick: the device's login ID")
	fs.DurationVar(&f.TTL, "ttl", 24*time.Hour, "users token: validity")
	fs.StringVar(&f.File, "file", "", "policy set: a PolicySet in JSON (proto field names); - reads stdin")
	fs.StringVar(&f.Mode, "mode", "", "policy set: multi or single")
	fs.IntVar(&f.DefaultLimit, "default-limit", 0, "policy set: devices per platform (default for platforms without --limit)")
	fs.StringVar(&f.Limits, "limit", "", "policy set: per-platform limits, PLATFORM=N[,PLATFORM=N...]")
	fs.StringVar(&f.AutoLogin, "auto-login", "", "policy set: kick-oldest or keep-current")
	// Flags and positional arguments may interleave; the only positional
	// one is the login ID of `devices kick`.
	var positional []string
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(out, "%s\nflags of %s %s:\n", groupUsage(group), group, verb)
			fs.SetOutput(out)
			fs.PrintDefaults()
			return flag.ErrHelp
		} else if err != nil {
			return fmt.Errorf("%v\n%s", err, groupUsage(group))
		}
		if rest = fs.Args(); len(rest) == 0 {
			break
		}
		positional, rest = append(positional, rest[0]), rest[1:]
	}
	if len(positional) > 0 {
		if group == "devices" && verb == "kick" && len(positional) == 1 && f.LoginID == "" {
			f.LoginID = positional[0]
		} else {
			return fmt.Errorf("unexpected arguments %q\n%s", positional, cliUsage)
		}
	}
	if f.App == "" {
		return errors.New("--app is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	a := &admincli.Admin{F: f, REST: client.NewREST(server, nil), Out: out, Stdin: stdin}
	return a.Run(ctx, group+" "+verb)
}
