package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdsync/mdsync/client"
	"google.golang.org/protobuf/encoding/protojson"
)

// runConnect logs one device in over the WebSocket protocol and prints
// what the server sends it, one line each, until it is kicked or
// interrupted. It is the quickstart's device and a debugging tool.
func runConnect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	server := fs.String("server", "http://127.0.0.1:8080", "server base URL (env MDSYNC_SERVER)")
	app := fs.String("app", "demo", "app ID (env MDSYNC_APP)")
	user := fs.String("user", "", "user ID (env MDSYNC_USER)")
	password := fs.String("password", "", "the user's password (env MDSYNC_PASSWORD)")
	token := fs.String("token", "", "a user token instead of the password (env MDSYNC_TOKEN)")
	loginID := fs.String("login-id", "", "login ID; empty: the server generates one")
	platform := fs.Int("platform", 1, "platform (osType), 1-100")
	name := fs.String("device-name", "", "device name shown to the user's other devices")
	ext := fs.String("extension", "", "login extension, passed to the device this login evicts")
	autoLogin := fs.Bool("auto-login", false, "reconnect automatically after a dropped connection")
	asJSON := fs.Bool("json", false, "print each frame as JSON")
	duration := fs.Duration("for", 0, "disconnect after this long (0: until kicked or interrupted)")
	if err := parseSettings(fs, args); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("connect: --user is required")
	}
	ws, err := wsURL(*server)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	p := &printer{w: os.Stdout, json: *asJSON}
	kicked := make(chan client.Kicked, 1)
	onKick := func(k client.Kicked) {
		p.kicked(k)
		select {
		case kicked <- k:
		default:
		}
	}
	c, err := client.Dial(ctx, client.Config{
		URL: ws, App: *app, User: *user, Password: *password, Token: *token,
		LoginID: *loginID, Platform: int32(*platform), DeviceName: *name, Extension: *ext, AutoLogin: *autoLogin,
		Handlers: client.Handlers{
			OnEvent:                       p.event,
			OnSnapshot:                    p.snapshot,
			OnUserDidLoginFromOtherDevice: onKick, OnUserKickedByOtherDevice: onKick,
			OnUserRemoved: onKick, OnPasswordChanged: onKick,
		},
	})
	if err != nil {
		return err
	}
	defer c.Close()
	p.line("logged_in", map[string]any{"login_id": c.LoginID()}, "logged in as %s/%s, login ID %s", *app, *user, c.LoginID())
	select {
	case k := <-kicked:
		return &client.Error{Code: k.Code, Message: "kicked: " + k.Reason}
	case <-ctx.Done():
		return nil
	}
}

// wsURL turns the server's base URL into its WebSocket endpoint.
func wsURL(base string) (string, error) {
	base = strings.TrimRight(base, "/")
	switch {
	case strings.HasPrefix(base, "http://"):
		return "ws://" + strings.TrimPrefix(base, "http://") + "/v1/ws", nil
	case strings.HasPrefix(base, "https://"):
		return "wss://" + strings.TrimPrefix(base, "https://") + "/v1/ws", nil
	case strings.HasPrefix(base, "ws://"), strings.HasPrefix(base, "wss://"):
		return base, nil
	}
	return "", fmt.Errorf("connect: --server %q is not an http(s):// or ws(s):// URL", base)
}

// printer writes one line per frame; handlers run on the client's
// goroutine, the final line on the caller's, hence the lock.
type printer struct {
	mu   sync.Mutex
	w    io.Writer
	json bool
}

func (p *printer) line(typ string, fields map[string]any, format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.json {
		fields["type"] = typ
		fields["time"] = time.Now().UTC().Format(time.RFC3339Nano)
		b, _ := json.Marshal(fields)
		fmt.Fprintln(p.w, string(b))
		return
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

func (p *printer) event(e client.Event) {
	entry, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(e.Entry)
	p.line("event", map[string]any{"epoch": e.Epoch, "seq": e.Seq, "name": e.Name, "entry": json.RawMessage(entry)},
		"event %d %s from %s: %s", e.Seq, e.Name, e.Entry.GetFrom(), entry)
}

func (p *printer) snapshot(s client.Snapshot) {
	p.line("snapshot", map[string]any{"epoch": s.Epoch, "seq": s.Seq, "resync": s.Resync, "conversations": len(s.Conversations)},
		"snapshot at seq %d (%d conversations, resync %v)", s.Seq, len(s.Conversations), s.Resync)
}

func (p *printer) kicked(k client.Kicked) {
	p.line("kicked", map[string]any{"code": k.Code, "reason": k.Reason, "by_login_id": k.ByLoginID, "by_device_name": k.ByDeviceName, "by_extension": k.ByExtension},
		"kicked: %d %s by %q (%s, %s)", k.Code, k.Reason, k.ByLoginID, k.ByDeviceName, k.ByExtension)
}
