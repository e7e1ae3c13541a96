package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/gateway"
)

// An idle device costs the server at most one goroutine, and still answers
// a ping and gets a live message. The devices here have no goroutine of
// their own (they are read only when the test expects a frame), so every
// goroutine added while they connect is the server's.
func TestIdleDevicesCostOneGoroutineEach(t *testing.T) {
	e := newEnv(t, func(o *gateway.Options) { o.SessionCheckInterval = -1 })
	const users, perUser = 100, 2
	const devices = users * perUser
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	read := func(ws *websocket.Conn, want string) sframe {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		defer rcancel()
		for {
			_, b, err := ws.Read(rctx)
			if err != nil {
				t.Fatalf("waiting for %s: %v", want, err)
			}
			var f sframe
			if err := json.Unmarshal(b, &f); err != nil {
				t.Fatalf("bad frame %s: %v", b, err)
			}
			if f.Type == want {
				return f
			}
		}
	}
	write := func(ws *websocket.Conn, s string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	base := runtime.NumGoroutine()
	ws := make([]*websocket.Conn, 0, devices)
	for u := range users {
		for d := range perUser {
			c, _, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.CloseNow() })
			b, _ := json.Marshal(loginFrame{Type: "login", ID: "l", App: "app", User: fmt.Sprint("idle", u), Password: "pw",
				LoginID: fmt.Sprintf("I%d-%d", u, d), Platform: int32(d + 1)})
			write(c, string(b))
			if r := read(c, "login_result"); r.Code != 0 {
				t.Fatalf("login: %+v", r)
			}
			read(c, "snapshot")
			ws = append(ws, c)
		}
	}
	var n int
	deadline := time.Now().Add(10 * time.Second)
	for n = runtime.NumGoroutine() - base; n > devices+16 && time.Now().Before(deadline); n = runtime.NumGoroutine() - base {
		time.Sleep(20 * time.Millisecond)
	}
	if n > devices+16 {
		t.Fatalf("%d idle devices added %d goroutines, want at most one each (+16)", devices, n)
	}
	t.Logf("%d idle devices added %d goroutines", devices, n)

	// Still served: a ping, then a message from the first device to the
	// last device's user, live.
	first, last := ws[0], ws[devices-1]
	write(last, `{"type":"ping","id":"p1"}`)
	if f := read(last, "pong"); f.ID != "p1" {
		t.Fatalf("pong %+v", f)
	}
	write(first, `{"type":"op","id":"m1","event":`+msgJSON(fmt.Sprint("idle", users-1), "idle-m1", "wake up")+`}`)
	if r := read(first, "result"); r.Code != 0 {
		t.Fatalf("send: %+v", r)
	}
	ev := read(last, "event")
	if body := string(ev.entry(t).GetSource().GetMessage().GetBody()); body != "wake up" {
		t.Fatalf("event body %q", body)
	}
}
