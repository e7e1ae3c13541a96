package gateway

import (
	"encoding/json"
	"testing"
)

// A result frame's hand-written JSON is json.Marshal's, byte for byte.
func FuzzResultJSON(f *testing.F) {
	f.Add("result", "31", int32(1019), "too many operations in flight on this connection; retry after retry_after_ms", "", "", int32(0), int64(0), int64(100))
	f.Add("result", "", int32(0), "", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "m-1", int32(7), int64(1<<40), int64(0))
	f.Add("result", "a\"b\\c", int32(-5), "<b>&amp;</b>\u2028\u2029\x00\x1f\b\f\n\r\t\x7f", "\xff\xfe", "é中文😀", int32(-1), int64(-9), int64(-1))
	f.Fuzz(func(t *testing.T, typ, id string, code int32, msg, eventID, messageID string, partition int32, offset, retry int64) {
		r := resultFrame{Type: typ, ID: id, Code: code, Message: msg, EventID: eventID, MessageID: messageID,
			Partition: partition, Offset: offset, RetryAfterMs: retry}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.appendJSON(nil); string(got) != string(want) {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	})
}
