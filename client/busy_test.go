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
