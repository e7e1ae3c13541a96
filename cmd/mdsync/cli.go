package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
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

// cliFlags are the flags every admin subcommand accepts.
type cliFlags struct {
	server, app, adminToken, data string
	user, password, token         string
	jsonOut                       bool
	timeout                       time.Duration

	newPassword, loginID string
	ttl                  time.Duration
	file, mode, limits   string
	autoLogin            string
	defaultLimit         int
}

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
	var f cliFlags
	fs := flag.NewFlagSet(group+" "+verb, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.StringVar(&f.server, "server", envOr("MDSYNC_SERVER", "http://127.0.0.1:8080"), "server base URL")
	fs.StringVar(&f.app, "app", envOr("MDSYNC_APP", ""), "app ID")
	fs.StringVar(&f.adminToken, "admin-token", envOr("MDSYNC_ADMIN_TOKEN", ""), "admin bearer token")
	fs.StringVar(&f.data, "data", envOr("MDSYNC_DATA", "data"), "data directory holding admin-token")
	fs.StringVar(&f.user, "user", "", "user ID")
	fs.StringVar(&f.password, "password", "", "the user's password (user-credential calls; users add: the new user's password)")
	fs.StringVar(&f.token, "token", "", "a user token")
	fs.BoolVar(&f.jsonOut, "json", false, "JSON output")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "request timeout")
	fs.StringVar(&f.newPassword, "new-password", "", "users passwd: the new password")
	fs.StringVar(&f.loginID, "login-id", "", "devices kick: the device's login ID")
	fs.DurationVar(&f.ttl, "ttl", 24*time.Hour, "users token: validity")
	fs.StringVar(&f.file, "file", "", "policy set: a PolicySet in JSON (proto field names); - reads stdin")
	fs.StringVar(&f.mode, "mode", "", "policy set: multi or single")
	fs.IntVar(&f.defaultLimit, "default-limit", 0, "policy set: devices per platform (default for platforms without --limit)")
	fs.StringVar(&f.limits, "limit", "", "policy set: per-platform limits, PLATFORM=N[,PLATFORM=N...]")
	fs.StringVar(&f.autoLogin, "auto-login", "", "policy set: kick-oldest or keep-current")
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
		if group == "devices" && verb == "kick" && len(positional) == 1 && f.loginID == "" {
			f.loginID = positional[0]
		} else {
			return fmt.Errorf("unexpected arguments %q\n%s", positional, cliUsage)
		}
	}
	if f.app == "" {
		return errors.New("--app is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	r := client.NewREST(f.server, nil)
	c := &cli{f: f, r: r, out: out, stdin: stdin}
	switch group + " " + verb {
	case "users add":
		return c.usersAdd(ctx)
	case "users passwd":
		return c.usersPasswd(ctx)
	case "users remove":
		return c.usersRemove(ctx)
	case "users token":
		return c.usersToken(ctx)
	case "devices list":
		return c.devicesList(ctx)
	case "devices kick":
		return c.devicesKick(ctx)
	case "devices kick-all":
		return c.devicesKickAll(ctx)
	case "policy get":
		return c.policyGet(ctx)
	case "policy set":
		return c.policySet(ctx)
	}
	return fmt.Errorf("unknown command %q\n%s", group+" "+verb, cliUsage)
}

type cli struct {
	f     cliFlags
	r     *client.REST
	out   io.Writer
	stdin io.Reader
}

// admin returns the admin credential: the flag or environment, else the
// token serve wrote into its data directory.
func (c *cli) admin() (client.Credential, error) {
	if c.f.adminToken != "" {
		return client.Credential{Admin: c.f.adminToken}, nil
	}
	b, err := os.ReadFile(filepath.Join(c.f.data, "admin-token"))
	if err != nil {
		return client.Credential{}, fmt.Errorf("no admin token: set --admin-token or MDSYNC_ADMIN_TOKEN, or --data DIR with DIR/admin-token (%v)", err)
	}
	return client.Credential{Admin: strings.TrimSpace(string(b))}, nil
}

// userOrAdmin prefers the user's own credential (kickDevice and friends
// work without logging in, with the password or a token).
func (c *cli) userOrAdmin() (client.Credential, error) {
	switch {
	case c.f.password != "":
		return client.Credential{Password: c.f.password}, nil
	case c.f.token != "":
		return client.Credential{Token: c.f.token}, nil
	}
	return c.admin()
}

func (c *cli) needUser() error {
	if c.f.user == "" {
		return errors.New("--user is required")
	}
	return nil
}

func (c *cli) printJSON(v any) error {
	var b []byte
	var err error
	if m, ok := v.(proto.Message); ok {
		b, err = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.out, "%s\n", b)
	return err
}

// printDecision reports which sessions an operation ended.
func (c *cli) printDecision(what string, d *pb.Decision) error {
	if c.f.jsonOut {
		return c.printJSON(d)
	}
	fmt.Fprintf(c.out, "%s; %d device(s) logged out\n", what, len(d.GetEnded()))
	for _, e := range d.GetEnded() {
		fmt.Fprintf(c.out, "  %s (platform %d, %q): %d %s\n", e.GetSession().GetLoginId(), e.GetSession().GetPlatform(),
			e.GetSession().GetDeviceName(), e.GetCode(), e.GetReason())
	}
	return nil
}

func (c *cli) usersAdd(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	if c.f.password == "" {
		return errors.New("--password (the new user's password) is required")
	}
	cred, err := c.admin()
	if err != nil {
		return err
	}
	if err := c.r.RegisterUser(ctx, c.f.app, c.f.user, c.f.password, cred); err != nil {
		return err
	}
	if c.f.jsonOut {
		return c.printJSON(map[string]string{"app": c.f.app, "user": c.f.user})
	}
	fmt.Fprintf(c.out, "user %s created in app %s\n", c.f.user, c.f.app)
	return nil
}

func (c *cli) usersPasswd(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	if c.f.newPassword == "" {
		return errors.New("--new-password is required")
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	d, err := c.r.ChangePassword(ctx, c.f.app, c.f.user, c.f.newPassword, cred)
	if err != nil {
		return err
	}
	return c.printDecision("password of "+c.f.user+" changed", d)
}

func (c *cli) usersRemove(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.admin()
	if err != nil {
		return err
	}
	d, err := c.r.RemoveUser(ctx, c.f.app, c.f.user, cred)
	if err != nil {
		return err
	}
	return c.printDecision("user "+c.f.user+" removed", d)
}

func (c *cli) usersToken(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	t, err := c.r.IssueToken(ctx, c.f.app, c.f.user, c.f.ttl, cred)
	if err != nil {
		return err
	}
	if c.f.jsonOut {
		return c.printJSON(t)
	}
	fmt.Fprintf(c.out, "%s\nexpires %s\n", t.Token, t.ExpiresAt().UTC().Format(time.RFC3339))
	return nil
}

func fmtMs(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

func (c *cli) devicesList(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	devs, err := c.r.FetchLoggedInDevices(ctx, c.f.app, c.f.user, cred)
	if err != nil {
		return err
	}
	if c.f.jsonOut {
		if devs == nil {
			devs = []client.Device{}
		}
		return c.printJSON(map[string]any{"devices": devs})
	}
	if len(devs) == 0 {
		fmt.Fprintf(c.out, "no device of %s is logged in\n", c.f.user)
		return nil
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOGIN_ID\tPLATFORM\tDEVICE_NAME\tCONNECTED\tLOGIN_TIME\tLAST_SEEN\tREMOTE_ADDR\tEXTENSION")
	for _, d := range devs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%t\t%s\t%s\t%s\t%s\n", d.LoginID, d.Platform, d.DeviceName, d.Connected,
			fmtMs(d.LoginTimeUnixMs), fmtMs(d.LastSeenUnixMs), orDash(d.RemoteAddr), orDash(d.Extension))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *cli) devicesKick(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	if c.f.loginID == "" {
		return errors.New("--login-id is required")
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	d, err := c.r.KickDeviceDecision(ctx, c.f.app, c.f.user, c.f.loginID, cred)
	if err != nil {
		return err
	}
	return c.printDecision("device "+c.f.loginID+" kicked", d)
}

func (c *cli) devicesKickAll(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	d, err := c.r.KickAllDevicesDecision(ctx, c.f.app, c.f.user, cred)
	if err != nil {
		return err
	}
	return c.printDecision("all devices of "+c.f.user+" kicked", d)
}

func (c *cli) policyGet(ctx context.Context) error {
	cred, err := c.admin()
	if err != nil {
		return err
	}
	p, err := c.r.GetPolicy(ctx, c.f.app, cred)
	if err != nil {
		return err
	}
	if c.f.jsonOut {
		return c.printJSON(p)
	}
	printPolicy(c.out, p)
	return nil
}

func printPolicy(w io.Writer, p *pb.Policy) {
	fmt.Fprintf(w, "version        %d\n", p.GetVersion())
	fmt.Fprintf(w, "mode           %s\n", strings.ToLower(strings.TrimPrefix(p.GetMode().String(), "PLATFORM_MODE_")))
	fmt.Fprintf(w, "default limit  %d devices per platform\n", p.GetDefaultLimit())
	for _, l := range p.GetLimits() {
		fmt.Fprintf(w, "limit          platform %d: %d\n", l.GetPlatform(), l.GetLimit())
	}
	fmt.Fprintf(w, "auto-login     %s\n", strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(p.GetAutoLogin().String(), "AUTO_LOGIN_POLICY_")), "_", "-"))
	if p.GetTimelineMaxEntries() != 0 || p.GetTimelineMaxAgeMs() != 0 {
		fmt.Fprintf(w, "timeline       max %d entries, max age %s\n", p.GetTimelineMaxEntries(), time.Duration(p.GetTimelineMaxAgeMs())*time.Millisecond)
	}
}

// policySet installs a policy: the --file one, or the current policy with
// the flags' changes (so `policy set --mode single` keeps the limits).
func (c *cli) policySet(ctx context.Context) error {
	cred, err := c.admin()
	if err != nil {
		return err
	}
	ps := &pb.PolicySet{}
	if c.f.file != "" {
		var b []byte
		if c.f.file == "-" {
			b, err = io.ReadAll(io.LimitReader(c.stdin, 1<<20))
		} else {
			b, err = os.ReadFile(c.f.file)
		}
		if err != nil {
			return err
		}
		if err := protojson.Unmarshal(b, ps); err != nil {
			return &client.Error{Code: client.CodeInvalidArgument, Message: "policy file is not an mdsync.v1.PolicySet in JSON: " + err.Error()}
		}
	} else {
		cur, err := c.r.GetPolicy(ctx, c.f.app, cred)
		if err != nil {
			return err
		}
		ps = &pb.PolicySet{Mode: cur.Mode, DefaultLimit: cur.DefaultLimit, Limits: cur.Limits, AutoLogin: cur.AutoLogin,
			TimelineMaxEntries: cur.TimelineMaxEntries, TimelineMaxAgeMs: cur.TimelineMaxAgeMs}
	}
	if err := applyPolicyFlags(ps, c.f); err != nil {
		return err
	}
	d, err := c.r.SetPolicy(ctx, c.f.app, ps, cred)
	if err != nil {
		return err
	}
	if c.f.jsonOut {
		return c.printJSON(d)
	}
	return c.printDecision(fmt.Sprintf("policy version %d installed", d.GetPolicyVersion()), d)
}

func applyPolicyFlags(ps *pb.PolicySet, f cliFlags) error {
	bad := func(format string, a ...any) error {
		return &client.Error{Code: client.CodeInvalidArgument, Message: fmt.Sprintf(format, a...)}
	}
	switch f.mode {
	case "":
	case "multi":
		ps.Mode = pb.PlatformMode_PLATFORM_MODE_MULTI
	case "single":
		ps.Mode = pb.PlatformMode_PLATFORM_MODE_SINGLE
	default:
		return bad("--mode %q is not multi or single", f.mode)
	}
	switch f.autoLogin {
	case "":
	case "kick-oldest":
		ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST
	case "keep-current":
		ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
	default:
		return bad("--auto-login %q is not kick-oldest or keep-current", f.autoLogin)
	}
	if f.defaultLimit != 0 {
		ps.DefaultLimit = int32(f.defaultLimit)
	}
	if f.limits != "" {
		byPlatform := map[int32]int32{}
		for _, l := range ps.Limits {
			byPlatform[l.Platform] = l.Limit
		}
		for _, kv := range strings.Split(f.limits, ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
			p, err1 := strconv.ParseInt(k, 10, 32)
			n, err2 := strconv.ParseInt(v, 10, 32)
			if !ok || err1 != nil || err2 != nil {
				return bad("--limit %q: want PLATFORM=N", kv)
			}
			byPlatform[int32(p)] = int32(n)
		}
		ps.Limits = nil
		for p, n := range byPlatform {
			ps.Limits = append(ps.Limits, &pb.PlatformLimit{Platform: p, Limit: n})
		}
		// The engine wants limits sorted by platform.
		sort.Slice(ps.Limits, func(i, j int) bool { return ps.Limits[i].Platform < ps.Limits[j].Platform })
	}
	return nil
}
