// Package admincli is the admin half of the mdsync command line (users,
// devices, policy) as a library: each command takes its inputs as Flags,
// calls the REST API through the Go SDK and prints text or JSON. cmd/mdsync
// parses the flags and calls Admin.Run.
package admincli

import (
	"context"
	"encoding/json"
	"errors"
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

// Flags are the inputs of the admin commands, as the command line spells
// them; a command reads the ones it needs.
type Flags struct {
	App        string
	AdminToken string // else read from Data/admin-token
	Data       string // serve's data directory
	User       string
	Password   string // the user's password (users add: the new user's)
	Token      string // a user token
	JSON       bool   // JSON output

	NewPassword  string        // users passwd
	LoginID      string        // devices kick
	TTL          time.Duration // users token
	File         string        // policy set: a PolicySet in JSON; "-" reads Stdin
	Mode         string        // policy set: multi or single
	Limits       string        // policy set: PLATFORM=N[,PLATFORM=N...]
	AutoLogin    string        // policy set: kick-oldest or keep-current
	DefaultLimit int           // policy set: devices per platform
}

// Admin runs the admin commands of one invocation: it checks the flags a
// command needs (a missing one is an error naming it), calls the REST API
// and writes text, or JSON with Flags.JSON, to Out.
type Admin struct {
	F     Flags
	REST  *client.REST
	Out   io.Writer
	Stdin io.Reader // policy set --file -
}

// Run runs one command, "group verb" as cmd/mdsync's usage spells it
// ("users add", "devices kick-all", "policy set", ...). Failures with a
// code come back as *client.Error.
func (c *Admin) Run(ctx context.Context, command string) error {
	switch command {
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
	return fmt.Errorf("unknown command %q", command)
}

// admin returns the admin credential: the flag or environment, else the
// token serve wrote into its data directory.
func (c *Admin) admin() (client.Credential, error) {
	if c.F.AdminToken != "" {
		return client.Credential{Admin: c.F.AdminToken}, nil
	}
	b, err := os.ReadFile(filepath.Join(c.F.Data, "admin-token"))
	if err != nil {
		return client.Credential{}, fmt.Errorf("no admin token: set --admin-token or MDSYNC_ADMIN_TOKEN, or --data DIR with DIR/admin-token (%v)", err)
	}
	return client.Credential{Admin: strings.TrimSpace(string(b))}, nil
}

// userOrAdmin prefers the user's own credential (kickDevice and friends
// work without logging in, with the password or a token).
func (c *Admin) userOrAdmin() (client.Credential, error) {
	switch {
	case c.F.Password != "":
		return client.Credential{Password: c.F.Password}, nil
	case c.F.Token != "":
		return client.Credential{Token: c.F.Token}, nil
	}
	return c.admin()
}

func (c *Admin) needUser() error {
	if c.F.User == "" {
		return errors.New("--user is required")
	}
	return nil
}

func (c *Admin) printJSON(v any) error {
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
	_, err = fmt.Fprintf(c.Out, "%s\n", b)
	return err
}

// printDecision reports which sessions an operation ended.
func (c *Admin) printDecision(what string, d *pb.Decision) error {
	if c.F.JSON {
		return c.printJSON(d)
	}
	fmt.Fprintf(c.Out, "%s; %d device(s) logged out\n", what, len(d.GetEnded()))
	for _, e := range d.GetEnded() {
		fmt.Fprintf(c.Out, "  %s (platform %d, %q): %d %s\n", e.GetSession().GetLoginId(), e.GetSession().GetPlatform(),
			e.GetSession().GetDeviceName(), e.GetCode(), e.GetReason())
	}
	return nil
}

func (c *Admin) usersAdd(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	if c.F.Password == "" {
		return errors.New("--password (the new user's password) is required")
	}
	cred, err := c.admin()
	if err != nil {
		return err
	}
	if err := c.REST.RegisterUser(ctx, c.F.App, c.F.User, c.F.Password, cred); err != nil {
		return err
	}
	if c.F.JSON {
		return c.printJSON(map[string]string{"app": c.F.App, "user": c.F.User})
	}
	fmt.Fprintf(c.Out, "user %s created in app %s\n", c.F.User, c.F.App)
	return nil
}

func (c *Admin) usersPasswd(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	if c.F.NewPassword == "" {
		return errors.New("--new-password is required")
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	d, err := c.REST.ChangePassword(ctx, c.F.App, c.F.User, c.F.NewPassword, cred)
	if err != nil {
		return err
	}
	return c.printDecision("password of "+c.F.User+" changed", d)
}

func (c *Admin) usersRemove(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.admin()
	if err != nil {
		return err
	}
	d, err := c.REST.RemoveUser(ctx, c.F.App, c.F.User, cred)
	if err != nil {
		return err
	}
	return c.printDecision("user "+c.F.User+" removed", d)
}

func (c *Admin) usersToken(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	t, err := c.REST.IssueToken(ctx, c.F.App, c.F.User, c.F.TTL, cred)
	if err != nil {
		return err
	}
	if c.F.JSON {
		return c.printJSON(t)
	}
	fmt.Fprintf(c.Out, "%s\nexpires %s\n", t.Token, t.ExpiresAt().UTC().Format(time.RFC3339))
	return nil
}

func fmtMs(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

func (c *Admin) devicesList(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	devs, err := c.REST.FetchLoggedInDevices(ctx, c.F.App, c.F.User, cred)
	if err != nil {
		return err
	}
	if c.F.JSON {
		if devs == nil {
			devs = []client.Device{}
		}
		return c.printJSON(map[string]any{"devices": devs})
	}
	if len(devs) == 0 {
		fmt.Fprintf(c.Out, "no device of %s is logged in\n", c.F.User)
		return nil
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
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

func (c *Admin) devicesKick(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	if c.F.LoginID == "" {
		return errors.New("--login-id is required")
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	d, err := c.REST.KickDeviceDecision(ctx, c.F.App, c.F.User, c.F.LoginID, cred)
	if err != nil {
		return err
	}
	return c.printDecision("device "+c.F.LoginID+" kicked", d)
}

func (c *Admin) devicesKickAll(ctx context.Context) error {
	if err := c.needUser(); err != nil {
		return err
	}
	cred, err := c.userOrAdmin()
	if err != nil {
		return err
	}
	d, err := c.REST.KickAllDevicesDecision(ctx, c.F.App, c.F.User, cred)
	if err != nil {
		return err
	}
	return c.printDecision("all devices of "+c.F.User+" kicked", d)
}

func (c *Admin) policyGet(ctx context.Context) error {
	cred, err := c.admin()
	if err != nil {
		return err
	}
	p, err := c.REST.GetPolicy(ctx, c.F.App, cred)
	if err != nil {
		return err
	}
	if c.F.JSON {
		return c.printJSON(p)
	}
	printPolicy(c.Out, p)
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
func (c *Admin) policySet(ctx context.Context) error {
	cred, err := c.admin()
	if err != nil {
		return err
	}
	ps := &pb.PolicySet{}
	if c.F.File != "" {
		var b []byte
		if c.F.File == "-" {
			b, err = io.ReadAll(io.LimitReader(c.Stdin, 1<<20))
		} else {
			b, err = os.ReadFile(c.F.File)
		}
		if err != nil {
			return err
		}
		if err := protojson.Unmarshal(b, ps); err != nil {
			return &client.Error{Code: client.CodeInvalidArgument, Message: "policy file is not an mdsync.v1.PolicySet in JSON: " + err.Error()}
		}
	} else {
		cur, err := c.REST.GetPolicy(ctx, c.F.App, cred)
		if err != nil {
			return err
		}
		ps = &pb.PolicySet{Mode: cur.Mode, DefaultLimit: cur.DefaultLimit, Limits: cur.Limits, AutoLogin: cur.AutoLogin,
			TimelineMaxEntries: cur.TimelineMaxEntries, TimelineMaxAgeMs: cur.TimelineMaxAgeMs}
	}
	if err := c.F.applyPolicy(ps); err != nil {
		return err
	}
	d, err := c.REST.SetPolicy(ctx, c.F.App, ps, cred)
	if err != nil {
		return err
	}
	if c.F.JSON {
		return c.printJSON(d)
	}
	return c.printDecision(fmt.Sprintf("policy version %d installed", d.GetPolicyVersion()), d)
}

// applyPolicy changes ps by --mode, --auto-login, --default-limit and
// --limit; a bad value is InvalidArgument.
func (f Flags) applyPolicy(ps *pb.PolicySet) error {
	bad := func(format string, a ...any) error {
		return &client.Error{Code: client.CodeInvalidArgument, Message: fmt.Sprintf(format, a...)}
	}
	switch f.Mode {
	case "":
	case "multi":
		ps.Mode = pb.PlatformMode_PLATFORM_MODE_MULTI
	case "single":
		ps.Mode = pb.PlatformMode_PLATFORM_MODE_SINGLE
	default:
		return bad("--mode %q is not multi or single", f.Mode)
	}
	switch f.AutoLogin {
	case "":
	case "kick-oldest":
		ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST
	case "keep-current":
		ps.AutoLogin = pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT
	default:
		return bad("--auto-login %q is not kick-oldest or keep-current", f.AutoLogin)
	}
	if f.DefaultLimit != 0 {
		ps.DefaultLimit = int32(f.DefaultLimit)
	}
	if f.Limits != "" {
		byPlatform := map[int32]int32{}
		for _, l := range ps.Limits {
			byPlatform[l.Platform] = l.Limit
		}
		for _, kv := range strings.Split(f.Limits, ",") {
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
