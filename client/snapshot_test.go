package client

import (
	"fmt"
	"strings"
	"testing"
)

// A snapshot sent in parts reaches OnSnapshot once, whole, after its last
// part, and only then is its position acked. Parts of a snapshot whose
// connection dropped are dropped: the reconnect's new snapshot starts at
// part 0 and is the one taken.
func TestSnapshotInParts(t *testing.T) {
	fs := newFakeServer(t)
	log := newEventLog()
	cfg := baseConfig(fs.url())
	cfg.AutoLogin = true
	var snaps []Snapshot
	cfg.Handlers.OnSnapshot = func(s Snapshot) { snaps = append(snaps, s); log.add(fmt.Sprintf("snapshot %s/%d", s.Epoch, s.Seq)) }
	cfg.Handlers.OnEvent = func(e Event) { log.add(fmt.Sprintf("%s/%d", e.Epoch, e.Seq)) }
	cfg.Handlers.OnDisconnected = func(err error) { log.add("disconnected") }
	_, fc, _ := mustDial(t, fs, cfg, "A1")
	// A first snapshot that never completes.
	fc.send(`{"type":"snapshot","resync":false,"epoch":"e1","seq":5,"part":0,"more":true,"contacts":{"friends":["zed"]},"groups":{},"conversations":[]}`)
	fc.close()
	log.wait(t, "disconnected")

	fc2 := fs.next(t)
	if m := fc2.read("resume", "login"); m["epoch"] != nil && m["epoch"] != "" {
		t.Fatalf("reconnected at %v: an incomplete snapshot is no position", m)
	} else {
		fc2.send(map[string]any{"type": "login_result", "id": m["id"], "code": 0, "login_id": "A1"})
	}
	for i, p := range []string{
		`"contacts":{"friends":["a","b"]},"groups":{},"conversations":[]`,
		`"contacts":{"friends":["c"],"requests_in":["d"]},"groups":{"groups":["g1"]},"conversations":[{"chat_type":"CHAT_TYPE_USER","conversation_id":"a","unread":2}]`,
		`"contacts":{},"groups":{"groups":["g2"],"threads":["g2/t1"]},"conversations":[{"chat_type":"CHAT_TYPE_GROUP","conversation_id":"g2"}]`,
	} {
		more := ""
		if i < 2 {
			more = `"more":true,`
		}
		fc2.send(fmt.Sprintf(`{"type":"snapshot","resync":true,"epoch":"e1","seq":7,"part":%d,%s%s}`, i, more, p))
	}
	fc2.send(event("e1", 8, "message_send", msgEntry(8, "bob", "aGk=")))
	log.wait(t, "e1/8")
	if got := strings.Join(log.all(), " "); got != "disconnected snapshot e1/7 e1/8" {
		t.Fatalf("saw %s", got)
	}
	s := snaps[0]
	if !s.Resync || strings.Join(s.Contacts.Friends, ",") != "a,b,c" || strings.Join(s.Contacts.RequestsIn, ",") != "d" ||
		strings.Join(s.Groups.Groups, ",") != "g1,g2" || strings.Join(s.Groups.Threads, ",") != "g2/t1" ||
		len(s.Conversations) != 2 || s.Conversations[0].Unread != 2 || s.Conversations[1].ConversationId != "g2" {
		t.Fatalf("snapshot %+v", s)
	}
	for {
		if m := fc2.read("ack"); m["seq"] == float64(8) {
			break
		} else if m["seq"] != float64(7) {
			t.Fatalf("ack %v", m)
		}
	}
}
