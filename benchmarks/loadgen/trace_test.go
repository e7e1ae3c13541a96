package loadgen

import (
	"slices"
	"strings"
	"testing"
)

// history is an export of a few operations, partition 1's rows first as
// `mdsync export` writes them (partition by partition).
const history = `{"partition":1,"offset":0,"event_id":"e10","op":"user_register","app":"a","user":"bob","client_op_id":"r2","time_ms":1000,"admin":true,"password_hash":"[redacted]"}
{"partition":1,"offset":1,"event_id":"e11","op":"login","app":"a","user":"bob","client_op_id":"l2","time_ms":1003,"login_id":"B1","platform":1}
{"partition":1,"offset":2,"event_id":"e12","op":"read_receipt","app":"a","user":"bob","client_op_id":"rr","time_ms":1006,"login_id":"B1","chat_type":"CHAT_TYPE_USER","conversation_id":"ann","message_id":"e03"}
{"partition":1,"offset":3,"event_id":"e13","op":"device_connected","app":"a","user":"bob","client_op_id":"pc","time_ms":1003,"login_id":"B1","connection":1}
{"partition":0,"offset":0,"event_id":"e00","op":"policy_set","app":"a","user":"admin","client_op_id":"p","time_ms":999,"admin":true,"mode":"multi","default_limit":1}
{"partition":0,"offset":1,"event_id":"e01","op":"user_register","app":"a","user":"ann","client_op_id":"r1","time_ms":1000,"admin":true,"password_hash":"[redacted]"}
{"partition":0,"offset":2,"event_id":"e02","op":"login","app":"a","user":"ann","client_op_id":"l1","time_ms":1002,"login_id":"A1","platform":1}
{"partition":0,"offset":3,"event_id":"e03","op":"message_send","app":"a","user":"ann","client_op_id":"m1","time_ms":1004,"login_id":"A1","chat_type":"CHAT_TYPE_USER","to":"bob","client_msg_id":"m1","body":"hi"}
{"partition":0,"offset":4,"event_id":"e04","op":"login","app":"a","user":"ann","client_op_id":"l3","time_ms":1005,"login_id":"A2","platform":2}
{"partition":0,"offset":5,"event_id":"e05","op":"group_create","app":"a","user":"ann","client_op_id":"g","time_ms":1007,"login_id":"A2","group_id":"g1","users":["bob"]}
{"partition":1,"offset":4,"event_id":"e14","op":"message_send","app":"a","user":"bob","client_op_id":"m2","time_ms":1008,"login_id":"B1","chat_type":"CHAT_TYPE_GROUP","to":"g1","client_msg_id":"m2","body":"yo"}
{"partition":1,"offset":5,"event_id":"e15","op":"user_register","app":"a","user":"bob","client_op_id":"r3","time_ms":1009,"admin":true,"password_hash":"[redacted]"}
{"op":"nonsense"}
`

func TestReadTraceOrdersAndPlans(t *testing.T) {
	tr, err := ReadTrace(strings.NewReader(history))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Lines != 13 || tr.Invalid != 1 || !strings.Contains(tr.FirstInvalid, "line 13") {
		t.Errorf("lines %d, invalid %d (%s)", tr.Lines, tr.Invalid, tr.FirstInvalid)
	}
	// Partitions merged by time; within a partition, offset order even
	// where a recorded time went back (e13 at 1003 after e12 at 1006).
	var ids []string
	idx := map[string]int{}
	for i, op := range tr.Ops {
		ids = append(ids, op.EventID)
		idx[op.EventID] = i
	}
	want := []string{"e00", "e01", "e10", "e02", "e11", "e03", "e04", "e12", "e13", "e05", "e14", "e15"}
	if !slices.Equal(ids, want) {
		t.Fatalf("order %v, want %v", ids, want)
	}
	// The registrations between e00 and e02 take no time.
	if tr.Ops[0].AtMs != 0 || tr.Ops[idx["e02"]].AtMs != 0 || tr.SpanMs != 7 || tr.Ops[idx["e13"]].AtMs != tr.Ops[idx["e12"]].AtMs {
		t.Errorf("times: first %d, span %d, e13 %d after e12 %d", tr.Ops[0].AtMs, tr.SpanMs, tr.Ops[idx["e13"]].AtMs, tr.Ops[idx["e12"]].AtMs)
	}
	mode := func(id string) playMode { return tr.Ops[idx[id]].mode }
	deps := func(id string) []string {
		var out []string
		for _, j := range tr.Ops[idx[id]].deps {
			out = append(out, tr.Ops[j].EventID)
		}
		return out
	}
	for id, m := range map[string]playMode{"e00": playAdmin, "e01": playSetup, "e10": playSetup, "e15": playRegister,
		"e02": playDial, "e03": playDevice, "e13": playPresence} {
		if mode(id) != m {
			t.Errorf("%s: mode %d, want %d", id, mode(id), m)
		}
	}
	for id, w := range map[string][]string{
		"e02": {"e00"},               // a login after the policy it is decided by
		"e03": {"e02"},               // after its device's login
		"e04": {"e00", "e02", "e03"}, // a session op after every earlier op of the user
		"e12": {"e11", "e03"},        // the receipt after the message it names
		"e05": {"e04"},
		"e13": {"e12"},               // presence follows its device's order
		"e14": {"e11", "e13", "e05"}, // the group message after the group's creation
	} {
		if got := deps(id); !slices.Equal(got, w) {
			t.Errorf("%s waits for %v, want %v", id, got, w)
		}
	}
	users, devices := tr.population()
	if len(users) != 2 || devices != 3 {
		t.Errorf("population %v, %d devices", users, devices)
	}
}

func TestParseSpeed(t *testing.T) {
	for in, want := range map[string]float64{"max": 0, "1": 1, "10": 10, "2.5x": 2.5} {
		if got, err := ParseSpeed(in); err != nil || got != want {
			t.Errorf("ParseSpeed(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"fast", "-1", ""} {
		if _, err := ParseSpeed(in); err == nil {
			t.Errorf("ParseSpeed(%q) accepted", in)
		}
	}
}
