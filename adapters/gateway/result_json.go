package gateway

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// A result frame answers every op, so it is written by hand rather than
// by json.Marshal's reflection: the same bytes (FuzzResultJSON compares
// them), in about a tenth of the time and one allocation.

// appendJSON appends r as json.Marshal encodes it.
func (r *resultFrame) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"type":`...)
	dst = appendJSONString(dst, r.Type)
	if r.ID != "" {
		dst = append(dst, `,"id":`...)
		dst = appendJSONString(dst, r.ID)
	}
	dst = append(dst, `,"code":`...)
	dst = strconv.AppendInt(dst, int64(r.Code), 10)
	if r.Message != "" {
		dst = append(dst, `,"message":`...)
		dst = appendJSONString(dst, r.Message)
	}
	if r.EventID != "" {
		dst = append(dst, `,"event_id":`...)
		dst = appendJSONString(dst, r.EventID)
	}
	if r.MessageID != "" {
		dst = append(dst, `,"message_id":`...)
		dst = appendJSONString(dst, r.MessageID)
	}
	dst = append(dst, `,"partition":`...)
	dst = strconv.AppendInt(dst, int64(r.Partition), 10)
	dst = append(dst, `,"offset":`...)
	dst = strconv.AppendInt(dst, r.Offset, 10)
	if r.RetryAfterMs != 0 {
		dst = append(dst, `,"retry_after_ms":`...)
		dst = strconv.AppendInt(dst, r.RetryAfterMs, 10)
	}
	return append(dst, '}')
}

// appendJSONString appends s quoted as encoding/json quotes a string. A
// string with nothing to escape (the common case: ids, codes' messages)
// is copied between quotes; any other goes to encoding/json itself, so its
// escaping rules (HTML characters, invalid UTF-8, U+2028/9) are the
// library's, not a copy of them.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b >= utf8.RuneSelf || b == '"' || b == '\\' || b == '<' || b == '>' || b == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(dst, q...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
