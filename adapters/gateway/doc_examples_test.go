package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/mdsync/mdsync/adapters/gateway"
	"github.com/mdsync/mdsync/adapters/node"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// anyAuth accepts every credential: the doc's examples carry their own.
type anyAuth struct{}

func (anyAuth) Authenticate(app, user, password, token, remote string) error { return nil }

// clientTypes are the frame types a client sends.
var clientTypes = map[string]bool{"login": true, "resume": true, "op": true, "ack": true, "self_ids": true, "history": true, "ping": true}

// docExamples returns every JSON value of the ```json blocks of
// docs/protocol.md, in order; each must be an object with a type.
func docExamples(t *testing.T) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	parts := strings.Split(string(b), "```json\n")
	for _, p := range parts[1:] {
		block, _, ok := strings.Cut(p, "```")
		if !ok {
			t.Fatalf("unterminated json block: %.80s", p)
		}
		d := json.NewDecoder(strings.NewReader(block))
		d.UseNumber()
		for {
			var m map[string]any
			err := d.Decode(&m)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("docs/protocol.md: a JSON example is not a JSON object (%v) in:\n%s", err, block)
			}
			if _, ok := m["type"].(string); !ok {
				t.Fatalf("docs/protocol.md: example without a type: %v", m)
			}
			out = append(out, m)
		}
	}
	return out
}

// rawConn is a protocol connection that keeps every frame it receives.
type rawConn struct {
	t      *testing.T
	ws     *websocket.Conn
	frames chan []byte
	seen   *frameShapes
}

// frameShapes is the union, per frame type, of the shapes of the frames a
// live gateway sent: "path:jsonkind" strings.
type frameShapes struct{ byType map[string]map[string]bool }

func (s *frameShapes) add(b []byte) {
	var v map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if d.Decode(&v) != nil {
		return
	}
	typ, _ := v["type"].(string)
	if s.byType[typ] == nil {
		s.byType[typ] = map[string]bool{}
	}
	for _, p := range shape(v, "") {
		s.byType[typ][p] = true
	}
}

// shape flattens a JSON value into "path:kind" strings ("entry.seq:number",
// "login_ids[]:string").
func shape(v any, path string) []string {
	switch x := v.(type) {
	case map[string]any:
		out := []string{path + ":object"}
		for k, e := range x {
			p := k
			if path != "" {
				p = path + "." + k
			}
			out = append(out, shape(e, p)...)
		}
		return out
	case []any:
		out := []string{path + ":array"}
		for _, e := range x {
			out = append(out, shape(e, path+"[]")...)
		}
		return out
	case string:
		return []string{path + ":string"}
	case json.Number:
		return []string{path + ":number"}
	case bool:
		return []string{path + ":bool"}
	}
	return []string{path + ":null"}
}

func dialRaw(t *testing.T, e *env, seen *frameShapes) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, e.url, &websocket.DialOptions{Subprotocols: []string{gateway.Subprotocol}})
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(16 << 20)
	c := &rawConn{t: t, ws: ws, frames: make(chan []byte, 1000), seen: seen}
	go func() {
		defer close(c.frames)
		for {
			_, b, err := ws.Read(context.Background())
			if err != nil {
				return
			}
			c.frames <- b
		}
	}()
	t.Cleanup(func() { ws.CloseNow() })
	return c
}

func (c *rawConn) send(v any) {
	c.t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("send %s: %v", b, err)
	}
}

// until reads frames (recording their shapes) until one satisfies ok.
func (c *rawConn) until(what string, ok func(map[string]any) bool) map[string]any {
	c.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case b, open := <-c.frames:
			if !open {
				c.t.Fatalf("connection closed waiting for %s", what)
			}
			c.seen.add(b)
			var m map[string]any
			json.Unmarshal(b, &m)
			if ok(m) {
				return m
			}
		case <-timeout:
			c.t.Fatalf("no %s within 5s", what)
		}
	}
}

func answerTo(id string, types ...string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		for _, ty := range types {
			if m["type"] == ty && (id == "" || m["id"] == id) {
				return true
			}
		}
		return false
	}
}

// TestProtocolDocExamples sends every client → server example of
// docs/protocol.md to a live gateway and checks the answer's type; it then
// checks every server → client example against the frames the gateway
// really sent: each field the example shows exists there, with the same
// JSON type (recursively), so the doc cannot drift from the server.
func TestProtocolDocExamples(t *testing.T) {
	// The smallest snapshot part, so a user with a few dozen conversations
	// gets a snapshot in parts.
	e := newEnv(t, func(o *gateway.Options) { o.Auth = anyAuth{}; o.SnapshotPartBytes = 4 << 10 })
	ctx := context.Background()
	// A policy, so login_result carries policy_version as the example does.
	if _, err := e.n.Engine.Submit(ctx, &pb.Event{App: "demo", ClientOpId: "pol", Kind: pb.Kind_KIND_POLICY_SET,
		Actor:   &pb.Actor{User: "admin", Admin: true},
		Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI, DefaultLimit: 4, AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST}}}); err != nil {
		t.Fatal(err)
	}
	seen := &frameShapes{byType: map[string]map[string]bool{}}
	examples := docExamples(t)
	var client, server []map[string]any
	for _, ex := range examples {
		if clientTypes[ex["type"].(string)] {
			client = append(client, ex)
		} else {
			server = append(server, ex)
		}
	}
	byType := func(typ string) []map[string]any {
		var out []map[string]any
		for _, ex := range client {
			if ex["type"] == typ {
				out = append(out, ex)
			}
		}
		return out
	}
	for typ := range clientTypes {
		if len(byType(typ)) == 0 {
			t.Errorf("docs/protocol.md has no example of a %s frame", typ)
		}
	}

	// The login example logs a device in; a second device of the user gets
	// its multi-device events.
	login := byType("login")[0]
	dev := dialRaw(t, e, seen)
	dev.send(login)
	if m := dev.until("login_result", answerTo(fmt.Sprint(login["id"]), "login_result")); m["code"] != float64(0) {
		t.Fatalf("the login example was refused: %v", m)
	}
	dev.until("snapshot", answerTo("", "snapshot"))
	other := dialRaw(t, e, seen)
	other.send(map[string]any{"type": "login", "id": "o", "app": login["app"], "user": login["user"], "password": "x", "login_id": "A2", "platform": 2})
	other.until("login_result", answerTo("o", "login_result"))

	for _, ex := range byType("op") {
		dev.send(ex)
		dev.until("the answer to op "+fmt.Sprint(ex["id"]), answerTo(fmt.Sprint(ex["id"]), "result", "error"))
	}
	// The pin reaches the other device as an event.
	other.until("the pin's event", func(m map[string]any) bool { return m["type"] == "event" && m["name"] == "pinnedConversation" })
	dev.send(map[string]any{"type": "op", "id": "11", "event": map[string]any{"kind": "KIND_FROB", "client_op_id": "f-1"}})
	dev.until("the unknown kind's error", answerTo("11", "error"))
	for _, ex := range byType("ack") {
		// An ack has no answer (an error for a position never sent): the
		// connection stays open and answers the next ping.
		dev.send(ex)
		dev.send(map[string]any{"type": "ping", "id": "after-ack"})
		dev.until("pong after the ack", answerTo("after-ack", "pong"))
	}
	answers := map[string]string{"self_ids": "self_ids_result", "history": "history_result", "ping": "pong"}
	for typ, ans := range answers {
		for _, ex := range byType(typ) {
			dev.send(ex)
			dev.until(ans, answerTo(fmt.Sprint(ex["id"]), ans))
		}
	}
	for _, ex := range byType("resume") {
		c := dialRaw(t, e, seen)
		c.send(ex)
		if m := c.until("login_result", answerTo(fmt.Sprint(ex["id"]), "login_result")); m["code"] != float64(0) || m["resumed"] != true {
			t.Errorf("the resume example: %v", m)
		}
	}

	// A snapshot in parts: a user with a friend, a group and 40
	// conversations with unread messages.
	sam := []*pb.Event{
		{App: "demo", ClientOpId: "rq", Kind: pb.Kind_KIND_CONTACT_REQUEST, Actor: &pb.Actor{User: "u1"}, Payload: &pb.Event_Contact{Contact: &pb.ContactOp{User: "sam"}}},
		{App: "demo", ClientOpId: "ac", Kind: pb.Kind_KIND_CONTACT_ACCEPT, Actor: &pb.Actor{User: "sam"}, Payload: &pb.Event_Contact{Contact: &pb.ContactOp{User: "u1"}}},
		{App: "demo", ClientOpId: "gc", Kind: pb.Kind_KIND_GROUP_CREATE, Actor: &pb.Actor{User: "sam"}, Payload: &pb.Event_Group{Group: &pb.GroupOp{GroupId: "g1", Name: "g1"}}},
	}
	for i := range 40 {
		sam = append(sam, &pb.Event{App: "demo", ClientOpId: "m", Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: fmt.Sprintf("v%02d", i)},
			Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "sam", ClientMsgId: "m", Body: []byte("hi")}}})
	}
	for i, ev := range sam {
		if d, err := e.n.Engine.Submit(ctx, ev); err != nil || d.Code != 0 {
			t.Fatalf("%s: %v %v", ev.ClientOpId, err, d)
		}
		if i == 0 { // the request reaches sam's partition through the relay
			eventually(t, "the contact request", func() bool {
				s, err := e.n.Store.Snapshot("demo", "sam")
				return err == nil && len(s.Contacts.RequestsIn) == 1
			})
		}
	}
	eventually(t, "sam's conversations", func() bool {
		s, err := e.n.Store.Snapshot("demo", "sam")
		return err == nil && len(s.Conversations) == 40
	})
	sc := dialRaw(t, e, seen)
	sc.send(map[string]any{"type": "login", "id": "s", "app": "demo", "user": "sam", "password": "x", "login_id": "S1", "platform": 1})
	sc.until("login_result", answerTo("s", "login_result"))
	if m := sc.until("the snapshot's part 0", answerTo("", "snapshot")); m["more"] != true {
		t.Fatalf("sam's snapshot is one part: %v", m)
	}
	last := sc.until("the snapshot's last part", func(m map[string]any) bool { return m["type"] == "snapshot" && m["more"] == nil })
	// Catch-up in batches: sam resumes from the start of his timeline,
	// asking for them.
	sb := dialRaw(t, e, seen)
	sb.send(map[string]any{"type": "resume", "id": "sb", "app": "demo", "user": "sam", "password": "x", "login_id": "S1",
		"epoch": last["epoch"], "seq": 0, "batch": true})
	sb.until("login_result", answerTo("sb", "login_result"))
	sb.until("an events frame", answerTo("", "events"))

	// Frames the examples above do not provoke: a refused login, a first
	// frame that is not a login, and a fifth login's eviction (kicked 206).
	bad := dialRaw(t, e, seen)
	bad.send(map[string]any{"type": "login", "id": "b", "app": "demo", "user": "bob", "password": "x", "platform": 0})
	bad.until("a refused login", answerTo("b", "login_result"))
	first := dialRaw(t, e, seen)
	first.send(map[string]any{"type": "ping"})
	first.until("1013", answerTo("", "error"))
	var phones []*rawConn
	for i := 1; i <= 5; i++ {
		c := dialRaw(t, e, seen)
		c.send(map[string]any{"type": "login", "id": "p", "app": "demo", "user": "carol", "password": "x", "login_id": fmt.Sprintf("C%d", i),
			"platform": 1, "device_name": fmt.Sprintf("phone %d", i), "extension": `{"n":1}`})
		c.until("login_result", answerTo("p", "login_result"))
		phones = append(phones, c)
	}
	phones[0].until("kicked", answerTo("", "kicked"))

	// A busy refusal (1019 with retry_after_ms): a gateway whose engine is
	// held, with one op in flight allowed per connection.
	g := &gated{}
	busyEnv := newEnvHooks(t, func(o *gateway.Options) { o.Auth = anyAuth{}; o.MaxOpsInFlight = 1 },
		envHooks{engine: func(_ *node.Node, inner gateway.Submitter) gateway.Submitter { g.inner = inner; return g }})
	bc := dialRaw(t, busyEnv, seen)
	bc.send(map[string]any{"type": "login", "id": "l", "app": "demo", "user": "dora", "password": "x", "login_id": "D1", "platform": 1})
	bc.until("login_result", answerTo("l", "login_result"))
	g.close() // hold every Begin from here
	for i := 0; i < 2; i++ {
		bc.send(map[string]any{"type": "op", "id": fmt.Sprint("busy", i), "event": map[string]any{"kind": "KIND_CONVERSATION_PIN",
			"client_op_id": fmt.Sprint("bp", i), "conversation": map[string]any{"chat_type": "CHAT_TYPE_USER", "conversation_id": "bob"}}})
	}
	bc.until("the busy result", func(m map[string]any) bool { return m["type"] == "result" && m["code"] == float64(1019) })
	g.open()
	bc.until("the held op's result", answerTo("busy0", "result"))

	for _, ex := range server {
		typ := ex["type"].(string)
		real := seen.byType[typ]
		if real == nil {
			t.Errorf("the doc shows a %s frame; the gateway sent none in this test", typ)
			continue
		}
		var missing []string
		for _, p := range shape(ex, "") {
			if !real[p] {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			sort.Strings(missing)
			var have []string
			for p := range real {
				have = append(have, p)
			}
			sort.Strings(have)
			t.Errorf("docs/protocol.md example %v: %v are not fields (with that JSON type) of the %s frames the gateway sent: %v", ex, missing, typ, have)
		}
	}
}
