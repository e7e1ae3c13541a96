package client

import (
	"context"
	"errors"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// An op refused as busy (1019) is sent again, with the same client_op_id,
// after the retry_after_ms the gateway asked for; a ctx that ends first
// returns the 1019.
func TestBusyOpIsResent(t *testing.T) {
	fs := newFakeServer(t)
	c, fc, _ := mustDial(t, fs, baseConfig(fs.url()), "A1")
	type res struct {
		r   Result
		err error
	}
	out := make(chan res, 1)
	go func() {
		r, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgID: "m1", Body: []byte("hi")})
		out <- res{r, err}
	}()
	first := fc.read("op")
	refused := time.Now()
	fc.send(map[string]any{"type": "result", "id": first["id"], "code": CodeBusy, "message": "busy", "retry_after_ms": 80})
	again := fc.read("op")
	if waited := time.Since(refused); waited < 70*time.Millisecond {
		t.Fatalf("resent after %v, want >= 80ms", waited)
	}
	if again["event"].(map[string]any)["client_op_id"] != "m1" || again["id"] == first["id"] {
		t.Fatalf("resent op %v after %v", again, first)
	}
	fc.send(map[string]any{"type": "result", "id": again["id"], "code": 0, "message_id": "id-m1"})
	if r := <-out; r.err != nil || r.r.MessageID != "id-m1" {
		t.Fatalf("after the resend: %+v %v", r.r, r.err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	go func() {
		r, err := c.Send(ctx, Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgID: "m2", Body: []byte("hi")})
		out <- res{r, err}
	}()
	m := fc.read("op")
	fc.send(map[string]any{"type": "result", "id": m["id"], "code": CodeBusy, "message": "busy", "retry_after_ms": 5000})
	r := <-out
	var e *Error
	if CodeOf(r.err) != CodeBusy || !errors.As(r.err, &e) || e.RetryAfter != 5*time.Second {
		t.Fatalf("ctx done while busy: %v", r.err)
	}
}

// An op refused with 1009 or 1018 (no owner known yet) and a
// retry_after_ms is sent again after it, at most maxRetryAttempts times in
// all; without a retry_after_ms (or with 1018 naming an owner) it is not.
func TestUnavailableOpIsResentBounded(t *testing.T) {
	fs := newFakeServer(t)
	c, fc, _ := mustDial(t, fs, baseConfig(fs.url()), "A1")
	errc := make(chan error, 1)
	send := func(id string) {
		go func() {
			_, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgID: id, Body: []byte("hi")})
			errc <- err
		}()
	}
	send("m1")
	for i := 1; i <= maxRetryAttempts; i++ {
		m := fc.read("op")
		if m["event"].(map[string]any)["client_op_id"] != "m1" {
			t.Fatalf("attempt %d: %v", i, m)
		}
		code := 1009
		if i%2 == 0 {
			code = CodeNotOwner
		}
		fc.send(map[string]any{"type": "result", "id": m["id"], "code": code, "message": "later", "retry_after_ms": 5})
	}
	if err := <-errc; CodeOf(err) != 1009 {
		t.Fatalf("after %d attempts: %v, want the last 1009", maxRetryAttempts, err)
	}

	for _, refusal := range []map[string]any{
		{"code": 1009, "message": "no hint"},
		{"code": CodeNotOwner, "message": "elsewhere", "addr": "10.0.0.2:8080", "retry_after_ms": 5},
	} {
		send("m2")
		m := fc.read("op")
		refusal["type"], refusal["id"] = "result", m["id"]
		fc.send(refusal)
		if err := <-errc; CodeOf(err) != int32(refusal["code"].(int)) {
			t.Fatalf("%v: %v", refusal, err)
		}
	}
}

// Dial logs in again after a refusal that carries a retry_after_ms (1009,
// or 1018 while no owner is known).
func TestDialRetriesUnavailableLogin(t *testing.T) {
	fs := newFakeServer(t)
	ch := dialAsync(baseConfig(fs.url()))
	fc := fs.next(t)
	m := fc.read("login")
	fc.send(map[string]any{"type": "error", "id": m["id"], "code": CodeNotOwner, "message": "owner not known yet", "retry_after_ms": 10})
	fc.close()
	fc = fs.next(t)
	m = fc.read("login")
	fc.send(map[string]any{"type": "login_result", "id": m["id"], "code": 1009, "message": "log slow", "retry_after_ms": 10})
	fc.close()
	fc = fs.next(t)
	fc.acceptLogin("A1")
	r := <-ch
	if r.err != nil {
		t.Fatalf("dial after two retryable refusals: %v", r.err)
	}
	r.c.Close()
}

// With Config.ReturnBusy, an op refused as busy (1019) comes back to the
// caller at once, with its RetryAfter, and is not sent again; other
// refusals a retry may cure (1009 with retry_after_ms) are still resent.
func TestReturnBusyReturnsAtOnce(t *testing.T) {
	fs := newFakeServer(t)
	cfg := baseConfig(fs.url())
	cfg.ReturnBusy = true
	c, fc, _ := mustDial(t, fs, cfg, "A1")
	errc := make(chan error, 1)
	send := func(id string) {
		go func() {
			_, err := c.Send(context.Background(), Message{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgID: id, Body: []byte("hi")})
			errc <- err
		}()
	}
	send("m1")
	m := fc.read("op")
	fc.send(map[string]any{"type": "result", "id": m["id"], "code": CodeBusy, "message": "busy", "retry_after_ms": 70})
	var e *Error
	select {
	case err := <-errc:
		if !errors.As(err, &e) || e.Code != CodeBusy || e.RetryAfter != 70*time.Millisecond {
			t.Fatalf("busy with ReturnBusy: %v, want 1019 with RetryAfter 70ms", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Send did not return the 1019")
	}

	// The next frame the server reads is m2's: m1 was not sent again.
	send("m2")
	m = fc.read("op")
	if id := m["event"].(map[string]any)["client_op_id"]; id != "m2" {
		t.Fatalf("after a returned 1019 the server read %v, want m2", id)
	}
	fc.send(map[string]any{"type": "result", "id": m["id"], "code": 1009, "message": "later", "retry_after_ms": 5})
	m = fc.read("op")
	if id := m["event"].(map[string]any)["client_op_id"]; id != "m2" {
		t.Fatalf("1009 with ReturnBusy: the server read %v, want m2 again", id)
	}
	fc.send(map[string]any{"type": "result", "id": m["id"], "code": 0, "message_id": "id-m2"})
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
