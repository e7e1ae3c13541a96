package benchmarks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

type allowAll struct{}

func (allowAll) Authenticate(app, user, password, token, remote string) error { return nil }

// BenchmarkCatchUpWebSocket: a device that missed N messages (64-byte
// bodies) resumes over a WebSocket on 127.0.0.1 (node.New with the embedded
// log, the gateway, a bare coder/websocket client that reads frames and
// decodes nothing), asking for batches as the SDKs do, timed from its
// resume frame to its N-th event (the last events frame). Two bare
// WebSocket servers, same run, write frames captured from the gateway after
// one request frame to the same client: raw, one event frame per entry
// (what a device that does not ask for batches gets), and rawbatch, the
// same events frames: what the sockets and the client cost, with no store
// and no gateway. The sides rotate; ratio = raw / mdsync, ratio_batch =
// rawbatch / mdsync; frames_batched: the events frames of one catch-up.
func BenchmarkCatchUpWebSocket(b *testing.B) {
	for _, n := range []int{100, 1000, 10_000} {
		b.Run(fmt.Sprint("N=", n), func(b *testing.B) { benchCatchUpWS(b, n) })
	}
}

func benchCatchUpWS(b *testing.B, missed int) {
	ctx := context.Background()
	log.SetOutput(io.Discard) // node.New gives Pebble the default logger
	var gp atomic.Pointer[gateway.Gateway]
	nd, err := node.New(ctx, node.Options{Dir: b.TempDir(), Partitions: 4,
		OnApplied: func(p int32, a projections.Applied) {
			if g := gp.Load(); g != nil {
				for _, e := range a.Entries {
					g.Deliver(e.App, e.User, e.Entry)
				}
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer nd.Close()
	g, err := gateway.New(gateway.Options{Auth: allowAll{}, Engine: nd.Engine, Store: nd.Store, Registerer: prometheus.NewRegistry(),
		SessionCheckInterval: -1, HeartbeatTimeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	gp.Store(g)
	srv := httptest.NewServer(g)
	defer srv.Close()
	defer g.Shutdown(ctx)
	url := "ws" + strings.TrimPrefix(srv.URL, "http")

	// The device's position: its first login's snapshot.
	ws, err := wsDial(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	wsSend(b, ws, map[string]any{"type": "login", "id": "l", "app": benchApp, "user": "alice", "password": "pw", "login_id": "A1", "platform": 1})
	var epoch string
	var seq uint64
	for epoch == "" {
		_, m, err := ws.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var f struct {
			Type  string `json:"type"`
			Epoch string `json:"epoch"`
			Seq   uint64 `json:"seq"`
		}
		json.Unmarshal(m, &f)
		if f.Type == "snapshot" {
			epoch, seq = f.Epoch, f.Seq
		}
	}
	ws.CloseNow()

	body := bytes.Repeat([]byte("x"), 64)
	ops := make([]*pb.Event, 0, missed)
	for i := range missed {
		id := fmt.Sprintf("m%06d", i)
		ops = append(ops, &pb.Event{App: benchApp, ClientOpId: id, Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: "bob"},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "alice", ClientMsgId: id, Body: body}}})
	}
	for len(ops) > 0 {
		// At most the node's bound on ops awaiting decisions per batch
		// (engine.Options.MaxPending): more would be refused as busy.
		k := min(len(ops), engine.DefaultMaxPending)
		for _, p := range nd.Engine.Begin(ctx, ops[:k]) {
			if d, err := p.Wait(ctx); err != nil || d.Code != 0 {
				b.Fatal(err, d)
			}
		}
		ops = ops[k:]
	}
	for {
		_, next, _, err := nd.Store.TimelineJSON(benchApp, "alice", "A1", epoch, seq+uint64(missed)-1, 1)
		if err == nil && next == seq+uint64(missed) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	// mdsync: a device that asks for batches (the SDKs do). The event frames
	// are counted in the frames read, without decoding them.
	eventMark := []byte(`{"type":"event",`)
	resumeFrame := func(batch bool) []byte {
		b, _ := json.Marshal(map[string]any{"type": "resume", "id": "r", "app": benchApp, "user": "alice", "password": "pw", "login_id": "A1",
			"epoch": epoch, "seq": seq, "batch": batch})
		return b
	}
	// captured[batch]: the frames the gateway sent, for the raw servers.
	captured := map[bool][][]byte{}
	mdRun := func(batch bool) (time.Duration, error) {
		ws, err := wsDial(ctx, url)
		if err != nil {
			return 0, err
		}
		defer ws.CloseNow()
		resume := resumeFrame(batch)
		start := time.Now()
		if err := ws.Write(ctx, websocket.MessageText, resume); err != nil {
			return 0, err
		}
		keep := captured[batch] == nil
		var frames [][]byte
		for got := 0; got < missed; {
			_, m, err := ws.Read(ctx)
			if err != nil {
				return 0, err
			}
			if n := bytes.Count(m, eventMark); n > 0 {
				got += n
				if keep {
					frames = append(frames, m)
				}
			}
		}
		d := time.Since(start)
		if keep {
			captured[batch] = frames
		}
		return d, nil
	}
	// Warm, and the frames the raw servers send: one per entry (a device
	// that does not ask for batches), and the batches.
	for _, batch := range []bool{false, true} {
		if _, err := mdRun(batch); err != nil {
			b.Fatal(err)
		}
		last := captured[batch][len(captured[batch])-1]
		if !bytes.Contains(last, []byte(fmt.Sprintf(`"seq":%d,`, seq+uint64(missed)))) {
			b.Fatalf("last frame (batch %v) %.80s", batch, last)
		}
	}
	if len(captured[false]) != missed {
		b.Fatalf("%d frames without batches, want %d", len(captured[false]), missed)
	}
	rawSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		if _, _, err := c.Read(r.Context()); err != nil {
			return
		}
		for _, f := range captured[r.URL.Query().Get("batch") == "1"] {
			if err := c.Write(r.Context(), websocket.MessageText, f); err != nil {
				return
			}
		}
		c.Read(r.Context()) // until the client goes
	}))
	defer rawSrv.Close()
	rawURL := "ws" + strings.TrimPrefix(rawSrv.URL, "http")
	rawRun := func(batch bool) (time.Duration, error) {
		u := rawURL
		if batch {
			u += "?batch=1"
		}
		ws, _, err := websocket.Dial(ctx, u, nil)
		if err != nil {
			return 0, err
		}
		ws.SetReadLimit(16 << 20)
		defer ws.CloseNow()
		resume := resumeFrame(batch)
		start := time.Now()
		if err := ws.Write(ctx, websocket.MessageText, resume); err != nil {
			return 0, err
		}
		for got := 0; got < missed; {
			_, m, err := ws.Read(ctx)
			if err != nil {
				return 0, err
			}
			got += bytes.Count(m, eventMark)
		}
		return time.Since(start), nil
	}
	sides := []func() (time.Duration, error){
		func() (time.Duration, error) { return mdRun(true) },
		func() (time.Duration, error) { return rawRun(false) },
		func() (time.Duration, error) { return rawRun(true) },
	}
	for _, f := range sides[1:] {
		if _, err := f(); err != nil {
			b.Fatal(err)
		}
	}
	var total [3]time.Duration // mdsync, raw, raw batches
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The sides rotate, so none always runs first (or last).
		for j := range sides {
			k := (i + j) % len(sides)
			d, err := sides[k]()
			if err != nil {
				b.Fatal(err)
			}
			total[k] += d
		}
	}
	b.StopTimer()
	b.ReportMetric(ms(total[0])/float64(b.N), "mdsync_ms/catchup")
	b.ReportMetric(ms(total[1])/float64(b.N), "raw_ms/catchup")
	b.ReportMetric(ms(total[2])/float64(b.N), "rawbatch_ms/catchup")
	b.ReportMetric(float64(total[1])/float64(total[0]), "ratio")
	b.ReportMetric(float64(total[2])/float64(total[0]), "ratio_batch")
	b.ReportMetric(float64(len(captured[true])), "frames_batched")
}

func wsDial(ctx context.Context, url string) (*websocket.Conn, error) {
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
	if err != nil {
		return nil, err
	}
	ws.SetReadLimit(16 << 20)
	return ws, nil
}

func wsSend(tb testing.TB, ws *websocket.Conn, v any) {
	tb.Helper()
	m, _ := json.Marshal(v)
	if err := ws.Write(context.Background(), websocket.MessageText, m); err != nil {
		tb.Fatal(err)
	}
}
