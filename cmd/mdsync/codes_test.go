package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/replay"
	"github.com/mdsync/mdsync/client"
)

// codesServer is a gateway and the REST API over one node, in process.
type codesServer struct {
	base, ws, token string
}

func newCodesServer(t *testing.T) codesServer {
	t.Helper()
	base, ws := startInProcess(t, 2)
	s := codesServer{base: base, ws: ws}
	r := client.NewREST(s.base, nil)
	admin := client.Credential{Admin: "adm"}
	if err := r.RegisterUser(context.Background(), "codes", "alice", "password-alice", admin); err != nil {
		t.Fatal(err)
	}
	tok, err := r.IssueToken(context.Background(), "codes", "alice", time.Hour, admin)
	if err != nil {
		t.Fatal(err)
	}
	s.token = tok.Token
	return s
}

// wsConn is a raw protocol connection.
type wsConn struct {
	t  *testing.T
	ws *websocket.Conn
}

func (s codesServer) dialWS(t *testing.T) *wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, s.ws, &websocket.DialOptions{Subprotocols: []string{client.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(32 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &wsConn{t: t, ws: ws}
}

func (c *wsConn) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

func (c *wsConn) sendRaw(b []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the next frame whose type is one of types (others, such as
// the snapshot after a login, are skipped).
func (c *wsConn) next(types ...string) map[string]any {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, b, err := c.ws.Read(ctx)
		if err != nil {
			c.t.Fatalf("waiting for %v: %v", types, err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			c.t.Fatalf("%v: %s", err, b)
		}
		for _, ty := range types {
			if m["type"] == ty {
				return m
			}
		}
	}
}

// answer is a refusal's code and message.
type answer struct {
	Code    int
	Message string
}

func (a answer) String() string { return fmt.Sprintf("%d %q", a.Code, a.Message) }

func answerOf(m map[string]any) answer {
	code, _ := m["code"].(float64)
	msg, _ := m["message"].(string)
	return answer{int(code), msg}
}

// TestOneCodePerBadInput feeds the same bad inputs through the WebSocket
// (a real gateway), POST /v1/operations (the REST handler) and replay (its
// decoder on JSON lines): each path answers with the same code and the
// same message, because each reads the input into an event and refuses it
// with engine.Validate (and engine.UnknownKind).
func TestOneCodePerBadInput(t *testing.T) {
	s := newCodesServer(t)
	long := func(n int) string { return strings.Repeat("e", n) }
	type row struct {
		name string
		// login rows: the fields of a login (WebSocket login frame,
		// KIND_LOGIN event, replay login line).
		login map[string]any
		// op rows: the event of an op frame (without app and actor, which
		// the connection gives), and the replay line of the same op.
		event  map[string]any
		replay map[string]any // nil: not expressible in replay's lines
		want   answer
	}
	login := func(change map[string]any) map[string]any {
		m := map[string]any{"app": "codes", "user": "alice", "login_id": "d1", "platform": 1, "device_name": "Pixel", "extension": "{}"}
		for k, v := range change {
			m[k] = v
		}
		return m
	}
	msg := func(change map[string]any) map[string]any {
		m := map[string]any{"chat_type": "CHAT_TYPE_USER", "to": "bob", "client_msg_id": "m1", "content_type": "text/plain", "body": "aGk="}
		for k, v := range change {
			m[k] = v
		}
		return m
	}
	msgLine := func(change map[string]any) map[string]any {
		m := map[string]any{"op": "message_send", "user": "alice", "login_id": "d1", "chat_type": "user", "to": "bob", "client_msg_id": "m1", "content_type": "text/plain", "body": "hi"}
		for k, v := range change {
			m[k] = v
		}
		return m
	}
	rows := []row{
		{name: "extension 1025 bytes", login: login(map[string]any{"extension": long(1025)}), want: answer{1004, "login.extension is 1025 bytes, limit 1024"}},
		{name: "device name 129 bytes", login: login(map[string]any{"device_name": long(129)}), want: answer{1004, "login.device_name is 129 bytes, limit 128"}},
		{name: "platform 0", login: login(map[string]any{"platform": 0}), want: answer{1001, "platform 0 is outside [1,100]"}},
		{name: "platform 101", login: login(map[string]any{"platform": 101}), want: answer{1001, "platform 101 is outside [1,100]"}},
		{name: "empty user", login: login(map[string]any{"user": ""}), want: answer{1003, "actor.user is required"}},
		{name: "user 65 bytes", login: login(map[string]any{"user": long(65)}), want: answer{1004, "actor.user is 65 bytes, limit 64"}},
		{name: "app 65 bytes", login: login(map[string]any{"app": long(65)}), want: answer{1004, "app is 65 bytes, limit 64"}},
		{name: "login id not an id", login: login(map[string]any{"login_id": "d 1"}), want: answer{1001, `actor.login_id "d 1": only letters, digits and _-.@ are allowed`}},

		{name: "message to an empty id",
			event:  map[string]any{"kind": "KIND_MESSAGE_SEND", "client_op_id": "m1", "message": msg(map[string]any{"to": ""})},
			replay: msgLine(map[string]any{"to": ""}), want: answer{1003, "message.to is required"}},
		{name: "message to a 65-byte id",
			event:  map[string]any{"kind": "KIND_MESSAGE_SEND", "client_op_id": "m1", "message": msg(map[string]any{"to": long(65)})},
			replay: msgLine(map[string]any{"to": long(65)}), want: answer{1004, "message.to is 65 bytes, limit 64"}},
		{name: "content type 65 bytes",
			event:  map[string]any{"kind": "KIND_MESSAGE_SEND", "client_op_id": "m1", "message": msg(map[string]any{"content_type": long(65)})},
			replay: msgLine(map[string]any{"content_type": long(65)}), want: answer{1004, "message.content_type is 65 bytes, limit 64"}},
		{name: "reserved client op id",
			event:  map[string]any{"kind": "KIND_MESSAGE_SEND", "client_op_id": "dlv.1", "message": msg(nil)},
			replay: msgLine(map[string]any{"client_op_id": "dlv.1"}), want: answer{1001, `client_op_id may not start with "dlv." (reserved for fan-out copies)`}},
		{name: "unknown kind",
			event:  map[string]any{"kind": "KIND_FROB", "client_op_id": "f1"},
			replay: map[string]any{"op": "KIND_FROB", "user": "alice"}, want: answer{1002, `kind "KIND_FROB" is not a known operation`}},
		{name: "unknown kind number",
			event: map[string]any{"kind": 999, "client_op_id": "f1"}, want: answer{1002, "kind 999 is not a known operation"}},
		{name: "missing payload",
			event: map[string]any{"kind": "KIND_CONVERSATION_PIN", "client_op_id": "p1"}, want: answer{1003, "conversation_pin needs a conversation payload"}},
		{name: "group name 129 bytes",
			event:  map[string]any{"kind": "KIND_GROUP_CREATE", "client_op_id": "g1", "group": map[string]any{"group_id": "g1", "name": long(129)}},
			replay: map[string]any{"op": "group_create", "user": "alice", "login_id": "d1", "group_id": "g1", "name": long(129)},
			want:   answer{1004, "group.name is 129 bytes, limit 128"}},
		{name: "mark 20",
			event:  map[string]any{"kind": "KIND_CONVERSATION_MARK", "client_op_id": "k1", "conversation": map[string]any{"chat_type": "CHAT_TYPE_USER", "conversation_id": "bob", "mark": 20}},
			replay: map[string]any{"op": "conversation_mark", "user": "alice", "login_id": "d1", "chat_type": "user", "conversation_id": "bob", "mark": 20},
			want:   answer{1001, "conversation.mark 20 is outside [0,19]"}},
	}

	// Replay: one JSON line per row that has one.
	var lines bytes.Buffer
	lineOf := map[int]int{}
	for i, r := range rows {
		l := r.replay
		if r.login != nil {
			l = map[string]any{"op": "login"}
			for k, v := range r.login {
				l[k] = v
			}
		}
		if l == nil {
			continue
		}
		b, _ := json.Marshal(l)
		lines.Write(append(b, '\n'))
		lineOf[len(lineOf)+1] = i
	}
	var out bytes.Buffer
	replay.Run(context.Background(), replay.Config{App: "codes", KeepGoing: true, At: -1, TempDir: t.TempDir()}, &lines, &out)
	replayed := map[int]answer{}
	for _, l := range strings.Split(out.String(), "\n") {
		var e replay.ErrorRow
		if json.Unmarshal([]byte(l), &e) == nil && e.Type == "error" {
			replayed[lineOf[e.Line]] = answer{int(e.Code), e.Message}
		}
	}

	// One device connection for the op rows.
	dev := s.dialWS(t)
	dev.send(map[string]any{"type": "login", "id": "l", "app": "codes", "user": "alice", "token": s.token, "login_id": "d1", "platform": 1})
	if m := dev.next("login_result"); answerOf(m).Code != 0 {
		t.Fatalf("login: %v", m)
	}

	for i, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			var ws, rest answer
			if r.login != nil {
				c := s.dialWS(t)
				f := map[string]any{"type": "login", "id": "1", "token": s.token}
				ev := map[string]any{"kind": "KIND_LOGIN", "client_op_id": "c1",
					"app": r.login["app"], "actor": map[string]any{"user": r.login["user"], "login_id": r.login["login_id"]},
					"login": map[string]any{"login_id": r.login["login_id"], "platform": r.login["platform"], "device_name": r.login["device_name"], "extension": r.login["extension"]}}
				for k, v := range r.login {
					f[k] = v
				}
				c.send(f)
				ws = answerOf(c.next("login_result", "error"))
				rest = postOperation(t, s.base, ev)
			} else {
				dev.send(map[string]any{"type": "op", "id": "op-" + r.name, "event": r.event})
				m := dev.next("error", "result")
				if m["id"] != "op-"+r.name {
					t.Fatalf("answer to another request: %v", m)
				}
				ws = answerOf(m)
				ev := map[string]any{"app": "codes", "actor": map[string]any{"user": "alice", "login_id": "d1"}}
				for k, v := range r.event {
					ev[k] = v
				}
				rest = postOperation(t, s.base, ev)
			}
			if ws != r.want {
				t.Errorf("WebSocket: %v, want %v", ws, r.want)
			}
			if rest != r.want {
				t.Errorf("REST: %v, want %v", rest, r.want)
			}
			if r.login != nil || r.replay != nil {
				if got, ok := replayed[i]; !ok || got != r.want {
					t.Errorf("replay: %v (%t), want %v", got, ok, r.want)
				}
			}
		})
	}

	// A message body over the limit: REST and replay say the same; the
	// WebSocket refuses the frame (64 KiB) before any event is read, with
	// the same code, and closes (docs/protocol.md).
	t.Run("body over 64 KiB", func(t *testing.T) {
		body := bytes.Repeat([]byte{'b'}, 64<<10+1)
		want := answer{1004, "message.body is 65537 bytes, limit 65536"}
		ev := map[string]any{"app": "codes", "actor": map[string]any{"user": "alice", "login_id": "d1"},
			"kind": "KIND_MESSAGE_SEND", "client_op_id": "m1", "message": msg(map[string]any{"body": body})}
		if got := postOperation(t, s.base, ev); got != want {
			t.Errorf("REST: %v, want %v", got, want)
		}
		var out bytes.Buffer
		line, _ := json.Marshal(msgLine(map[string]any{"body": string(body)}))
		replay.Run(context.Background(), replay.Config{App: "codes", KeepGoing: true, At: -1, TempDir: t.TempDir()}, bytes.NewReader(line), &out)
		var e replay.ErrorRow
		json.Unmarshal([]byte(strings.Split(out.String(), "\n")[0]), &e)
		if got := (answer{int(e.Code), e.Message}); got != want {
			t.Errorf("replay: %v, want %v", got, want)
		}
		c := s.dialWS(t)
		c.send(map[string]any{"type": "login", "id": "l", "app": "codes", "user": "alice", "token": s.token, "login_id": "d2", "platform": 2})
		c.next("login_result")
		b, _ := json.Marshal(map[string]any{"type": "op", "id": "big", "event": map[string]any{"kind": "KIND_MESSAGE_SEND", "client_op_id": "m1", "message": msg(map[string]any{"body": body})}})
		c.sendRaw(b)
		if got := answerOf(c.next("error")); got.Code != 1004 {
			t.Errorf("WebSocket: %v, want code 1004", got)
		}
	})
}

// postOperation submits an event with POST /v1/operations as the admin
// and returns the refusal's code and message.
func postOperation(t *testing.T, base string, ev map[string]any) answer {
	t.Helper()
	b, _ := json.Marshal(ev)
	req, _ := http.NewRequest("POST", base+"/v1/operations", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer adm")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("REST answer %s: %v", body, err)
	}
	return answer{a.Code, a.Message}
}
