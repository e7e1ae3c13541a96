package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// EchoServer is the same-run baseline: a bare WebSocket server that speaks
// just enough of the device protocol (docs/protocol.md) for the SDK to
// log in and get an answer to every request — login_result, result, pong,
// self_ids_result — with no decision, no log, no store and no fan-out.
// Ops/s against it are the floor set by what both sides share on this
// machine: TCP over loopback, WebSocket framing, JSON, the SDK and the
// benchmark's own goroutines on the same cores. mdsync's ops/s over it is
// the fraction of that floor the server's real work leaves.
type EchoServer struct {
	Addr   string
	srv    *http.Server
	ln     net.Listener
	ops    atomic.Int64
	logins atomic.Int64
	// busyEvery, when set (tests), refuses every busyEvery-th op with 1019
	// and retry_after_ms 30, as an overloaded node does.
	busyEvery int64
}

// StartEchoServer listens on 127.0.0.1 with a kernel-chosen port.
func StartEchoServer(logger *slog.Logger) (*EchoServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e := &EchoServer{Addr: ln.Addr().String(), ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ws", e.serveWS)
	e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	go e.srv.Serve(ln)
	return e, nil
}

// Ops is the number of requests answered.
func (e *EchoServer) Ops() int64 { return e.ops.Load() }

// Close stops the server and its connections.
func (e *EchoServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return e.srv.Close()
	}
	return err
}

// echoRequest is the part of a client frame the echo server looks at.
type echoRequest struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	LoginID string `json:"login_id"`
}

func (e *EchoServer) serveWS(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols:    []string{"mdsync.v1"},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(64 << 10) // the gateway's client frame limit
	ctx := r.Context()
	var offset int64
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		var req echoRequest
		if json.Unmarshal(b, &req) != nil {
			return
		}
		var out map[string]any
		switch req.Type {
		case "login", "resume":
			lid := req.LoginID
			if lid == "" {
				lid = "echo-" + strconv.FormatInt(e.logins.Add(1), 36)
			}
			out = map[string]any{"type": "login_result", "id": req.ID, "code": 0, "login_id": lid, "resumed": req.Type == "resume"}
		case "op":
			if n := e.ops.Add(1); e.busyEvery > 0 && n%e.busyEvery == 0 {
				out = map[string]any{"type": "result", "id": req.ID, "code": 1019, "message": "busy", "retry_after_ms": 30}
				break
			}
			offset++
			id := "e" + strconv.FormatInt(offset, 10)
			out = map[string]any{"type": "result", "id": req.ID, "code": 0, "event_id": id, "message_id": id, "partition": 0, "offset": offset}
		case "ping":
			out = map[string]any{"type": "pong", "id": req.ID}
		case "self_ids":
			out = map[string]any{"type": "self_ids_result", "id": req.ID, "code": 0, "login_ids": []string{}}
		case "ack":
			continue
		default:
			out = map[string]any{"type": "error", "id": req.ID, "code": 1001, "message": "unknown type"}
		}
		resp, _ := json.Marshal(out)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.Write(wctx, websocket.MessageText, resp)
		cancel()
		if err != nil {
			return
		}
	}
}

// baseline runs the request/answer part of the mix (messages, receipts,
// pins; no logins) as a closed loop of Concurrency workers against the
// echo server, over the same SDK, source addresses and message sizes.
func (b *bench) baseline(ctx context.Context) (*BaselineReport, error) {
	e, err := StartEchoServer(b.log)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	nDev := b.sc.BaselineDevices
	if nDev == 0 {
		nDev = min(len(b.devs), 2*b.sc.Concurrency)
	}
	eb := newBench(b.sc, b.log, b.src, true)
	eb.runID, eb.wsURL = b.runID, "ws://"+e.Addr+"/v1/ws"
	eb.sc.Mix.EvictionLogin, eb.sc.Mix.Reconnect = 0, 0
	if eb.sc.Mix.total() == 0 {
		eb.sc.Mix.UserMessage = 1
	}
	eb.groups = b.groups
	// The same users, fewer devices: one per user round robin.
	for _, u := range b.users {
		eu := &user{name: u.name, password: u.password, token: u.token}
		eb.users = append(eb.users, eu)
	}
	for i := 0; i < nDev; i++ {
		u := eb.users[i%len(eb.users)]
		d := &device{b: eb, u: u, ui: i % len(eb.users), platform: 1, name: "echo"}
		u.devs = append(u.devs, d)
		eb.devs = append(eb.devs, d)
	}
	for _, d := range eb.devs {
		if _, _, err := d.dial(ctx, ""); err != nil {
			return nil, err
		}
	}
	defer eb.closeAll()
	// Users without a device (more users than devices) cannot send group
	// messages; onlineDeviceOf skips them and the op counts as skipped.
	total := newPhaseRec()
	pr := eb.runPhase(ctx, Phase{Name: "baseline", Duration: secs(b.sc.BaselineSeconds)}, total, noProgress{})
	if pr.Ops == 0 {
		return nil, fmt.Errorf("baseline answered nothing: %v", eb.errFirst)
	}
	return &BaselineReport{
		What: "bare protocol echo server in the benchmark process (login_result/result/pong, no decision, log or fan-out): " +
			"the same SDK, connections and request mix minus logins, closed loop of the same concurrency",
		Devices: nDev, Seconds: pr.Seconds, Ops: pr.Ops, OpsPerSec: pr.OpsPerSec, Op: pr.Op,
	}, nil
}
