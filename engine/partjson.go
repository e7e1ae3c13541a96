package engine

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// MarshalPart is the one JSON form of a protobuf part: what the gateway
// sends inside its frames (docs/protocol.md, "JSON types") and what a
// stored timeline entry keeps, ready to send. It is protojson with the
// .proto field names, with every int64/uint64 field (which protojson
// writes as a string) written as a number, and without the whitespace
// protojson may insert: for one build it is a pure function of the
// message, so a projection may store it and a rebuild writes the same
// bytes. Every 64-bit value mdsync sends (sequences, offsets, versions,
// times in ms) is below 2^53, so a JavaScript client reads it exactly.
//
// It is written directly from the message (appendMessage): protojson's
// field sorting, its encoder and a second pass over its output were most of
// the cost of applying a delivery (the source event of every timeline
// entry is stored in this form). A message this encoder does not cover
// (floats, maps, well-known types, extensions) or cannot encode (a string
// that is not UTF-8) goes the reference way, protojson then numbers64;
// TestMarshalPartMatchesProtojson holds the two byte for byte.
func MarshalPart(m proto.Message) ([]byte, error) {
	if b, err := appendMessage(make([]byte, 0, 256), m.ProtoReflect()); err == nil {
		return b, nil
	}
	return marshalPartReference(m)
}

// marshalPartReference is MarshalPart by protojson and numbers64.
func marshalPartReference(m proto.Message) ([]byte, error) {
	b, err := partOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	return numbers64(b, m.ProtoReflect().Descriptor())
}

// errUncovered makes MarshalPart take the reference way.
var errUncovered = errors.New("engine: not covered by the direct JSON encoder")

// appendMessage appends m as protojson would write it (UseProtoNames, no
// whitespace; populated fields in declaration order), with 64-bit integers
// as numbers.
func appendMessage(out []byte, m protoreflect.Message) ([]byte, error) {
	if ev, ok := m.Interface().(*pb.Event); ok {
		if b, ok := appendEvent(out, ev); ok {
			return b, nil
		}
	}
	md := m.Descriptor()
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return nil, errUncovered // well-known types have their own JSON forms
	}
	out = append(out, '{')
	fields := md.Fields()
	first := true
	var err error
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, '"')
		out = append(out, fd.TextName()...) // an identifier: nothing to escape
		out = append(out, '"', ':')
		v := m.Get(fd)
		switch {
		case fd.IsMap():
			return nil, errUncovered
		case fd.IsList():
			l := v.List()
			out = append(out, '[')
			for j := 0; j < l.Len(); j++ {
				if j > 0 {
					out = append(out, ',')
				}
				if out, err = appendSingular(out, l.Get(j), fd); err != nil {
					return nil, err
				}
			}
			out = append(out, ']')
		default:
			if out, err = appendSingular(out, v, fd); err != nil {
				return nil, err
			}
		}
	}
	return append(out, '}'), nil
}

func appendSingular(out []byte, v protoreflect.Value, fd protoreflect.FieldDescriptor) ([]byte, error) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return strconv.AppendBool(out, v.Bool()), nil
	case protoreflect.StringKind:
		return appendJSONString(out, v.String())
	case protoreflect.BytesKind:
		out = append(out, '"')
		out = base64.StdEncoding.AppendEncode(out, v.Bytes())
		return append(out, '"'), nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return strconv.AppendInt(out, v.Int(), 10), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return strconv.AppendUint(out, v.Uint(), 10), nil
	case protoreflect.EnumKind:
		if fd.Enum().FullName() == "google.protobuf.NullValue" {
			return nil, errUncovered
		}
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			out = append(out, '"')
			out = append(out, ev.Name()...)
			return append(out, '"'), nil
		}
		return strconv.AppendInt(out, int64(v.Enum()), 10), nil
	case protoreflect.MessageKind:
		return appendMessage(out, v.Message())
	}
	return nil, errUncovered // floats (protojson's own formatting), groups
}

// appendJSONString is protojson's string encoding: '"' and '\\' escaped,
// control characters as \b \f \n \r \t or \u00XX, everything else as
// it is; a string that is not UTF-8 is not covered (protojson refuses it).
func appendJSONString(out []byte, s string) ([]byte, error) {
	out = append(out, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				return nil, errUncovered
			}
			i += n
			continue
		}
		if c >= ' ' && c != '"' && c != '\\' {
			i++
			continue
		}
		out = append(out, s[start:i]...)
		switch c {
		case '"', '\\':
			out = append(out, '\\', c)
		case '\b':
			out = append(out, '\\', 'b')
		case '\f':
			out = append(out, '\\', 'f')
		case '\n':
			out = append(out, '\\', 'n')
		case '\r':
			out = append(out, '\\', 'r')
		case '\t':
			out = append(out, '\\', 't')
		default:
			out = append(out, '\\', 'u', '0', '0', hexDigit[c>>4], hexDigit[c&0xf])
		}
		i++
		start = i
	}
	out = append(out, s[start:]...)
	return append(out, '"'), nil
}

const hexDigit = "0123456789abcdef"

var partOptions = protojson.MarshalOptions{UseProtoNames: true}

func is64(fd protoreflect.FieldDescriptor) bool {
	switch fd.Kind() {
	case protoreflect.Int64Kind, protoreflect.Uint64Kind, protoreflect.Sint64Kind,
		protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind:
		return true
	}
	return false
}

// numbers64 rewrites protojson output b of a message of descriptor md in
// one pass: every value of a 64-bit integer field (scalar, list element or
// map value, at any depth) that protojson wrote as a decimal string is
// written as a bare number; everything else is copied as it is, minus the
// whitespace protojson may insert. It is what decoding b into `any`,
// turning those strings into numbers and marshalling again did, without
// the decode and re-encode (that was ~4% of a busy server's CPU).
func numbers64(b []byte, md protoreflect.MessageDescriptor) ([]byte, error) {
	r := rewriter{in: b, out: make([]byte, 0, len(b))}
	r.ws()
	if err := r.value(kindMessage, md); err != nil {
		return nil, err
	}
	r.ws()
	if r.i != len(r.in) {
		return nil, errJSONSyntax
	}
	return r.out, nil
}

var errJSONSyntax = errors.New("engine: unexpected protojson output")

// How a value is treated.
const (
	kindPlain   = iota // copied
	kindNumber         // a 64-bit integer: a string of digits loses its quotes
	kindMessage        // an object of the given message: its fields are looked at
)

type rewriter struct {
	in  []byte
	i   int
	out []byte
}

func (r *rewriter) ws() {
	for r.i < len(r.in) {
		switch r.in[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// value rewrites one value at r.i (whitespace skipped before it).
func (r *rewriter) value(kind int, md protoreflect.MessageDescriptor) error {
	if r.i >= len(r.in) {
		return errJSONSyntax
	}
	switch c := r.in[r.i]; {
	case c == '{' && kind == kindMessage && md != nil:
		return r.object(md)
	case c == '{' || c == '[':
		return r.container(c)
	case c == '"':
		start := r.i
		end, plain, err := r.str()
		if err != nil {
			return err
		}
		if kind == kindNumber && plain && isInteger(r.in[start+1:end-1]) {
			r.out = append(r.out, r.in[start+1:end-1]...)
		} else {
			r.out = append(r.out, r.in[start:end]...)
		}
		return nil
	default: // number, true, false, null
		start := r.i
		for r.i < len(r.in) {
			switch r.in[r.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				r.out = append(r.out, r.in[start:r.i]...)
				return nil
			}
			r.i++
		}
		r.out = append(r.out, r.in[start:r.i]...)
		return nil
	}
}

// str scans the string at r.i and returns the index after its closing
// quote, and whether it has no escapes.
func (r *rewriter) str() (end int, plain bool, err error) {
	plain = true
	for j := r.i + 1; j < len(r.in); j++ {
		switch r.in[j] {
		case '\\':
			plain = false
			j++
		case '"':
			r.i = j + 1
			return r.i, plain, nil
		}
	}
	return 0, false, errJSONSyntax
}

// object rewrites an object of message md.
func (r *rewriter) object(md protoreflect.MessageDescriptor) error {
	fields := md.Fields()
	r.out = append(r.out, '{')
	r.i++
	for first := true; ; first = false {
		r.ws()
		if r.i < len(r.in) && r.in[r.i] == '}' {
			r.i++
			r.out = append(r.out, '}')
			return nil
		}
		if !first {
			if r.i >= len(r.in) || r.in[r.i] != ',' {
				return errJSONSyntax
			}
			r.i++
			r.out = append(r.out, ',')
			r.ws()
		}
		if r.i >= len(r.in) || r.in[r.i] != '"' {
			return errJSONSyntax
		}
		start := r.i
		end, plain, err := r.str()
		if err != nil {
			return err
		}
		r.out = append(r.out, r.in[start:end]...)
		var fd protoreflect.FieldDescriptor
		if plain {
			fd = fields.ByTextName(string(r.in[start+1 : end-1]))
		}
		r.ws()
		if r.i >= len(r.in) || r.in[r.i] != ':' {
			return errJSONSyntax
		}
		r.i++
		r.out = append(r.out, ':')
		r.ws()
		if err := r.field(fd); err != nil {
			return err
		}
	}
}

// field rewrites the value of field fd (nil: not a field of the message).
func (r *rewriter) field(fd protoreflect.FieldDescriptor) error {
	switch {
	case fd == nil:
		return r.value(kindPlain, nil)
	case fd.IsMap():
		kind, md := kindOf(fd.MapValue())
		if r.in[r.i] != '{' {
			return r.value(kindPlain, nil)
		}
		return r.elements('{', '}', kind, md)
	case fd.IsList():
		kind, md := kindOf(fd)
		if r.in[r.i] != '[' {
			return r.value(kindPlain, nil)
		}
		return r.elements('[', ']', kind, md)
	default:
		kind, md := kindOf(fd)
		return r.value(kind, md)
	}
}

func kindOf(fd protoreflect.FieldDescriptor) (int, protoreflect.MessageDescriptor) {
	switch {
	case is64(fd):
		return kindNumber, nil
	case fd.Message() != nil:
		return kindMessage, fd.Message()
	}
	return kindPlain, nil
}

// elements rewrites an array (open '[') or a map object (open '{', keys
// copied) whose values are of kind.
func (r *rewriter) elements(open, close byte, kind int, md protoreflect.MessageDescriptor) error {
	r.out = append(r.out, open)
	r.i++
	for first := true; ; first = false {
		r.ws()
		if r.i < len(r.in) && r.in[r.i] == close {
			r.i++
			r.out = append(r.out, close)
			return nil
		}
		if !first {
			if r.i >= len(r.in) || r.in[r.i] != ',' {
				return errJSONSyntax
			}
			r.i++
			r.out = append(r.out, ',')
			r.ws()
		}
		if open == '{' {
			if r.i >= len(r.in) || r.in[r.i] != '"' {
				return errJSONSyntax
			}
			start := r.i
			end, _, err := r.str()
			if err != nil {
				return err
			}
			r.out = append(r.out, r.in[start:end]...)
			r.ws()
			if r.i >= len(r.in) || r.in[r.i] != ':' {
				return errJSONSyntax
			}
			r.i++
			r.out = append(r.out, ':')
			r.ws()
		}
		if err := r.value(kind, md); err != nil {
			return err
		}
	}
}

// container copies an object or array whose contents are not rewritten.
func (r *rewriter) container(open byte) error {
	if open == '[' {
		return r.elements('[', ']', kindPlain, nil)
	}
	return r.elements('{', '}', kindPlain, nil)
}

// isInteger reports whether s is an optional '-' and one or more digits.
func isInteger(s []byte) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if len(s) == 0 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendEvent is appendMessage for the events most parts carry: an event
// with no payload or a message payload (the source of every timeline
// entry of a message), written from the Go fields in declaration order,
// without protoreflect (whose per-field Has and Get were most of a
// message entry's encoding). It returns false, having appended nothing
// that counts, for any other event or a string that is not UTF-8: the
// caller then takes the general way. FuzzAppendEvent holds it to the
// reference byte for byte.
func appendEvent(out []byte, ev *pb.Event) ([]byte, bool) {
	var msg *pb.MessageSend
	switch p := ev.Payload.(type) {
	case nil:
	case *pb.Event_Message:
		if msg = p.Message; msg == nil {
			return out, false
		}
	default:
		return out, false
	}
	start := len(out)
	w := partWriter{out: append(out, '{'), first: true}
	if ev.SchemaVersion != 0 {
		w.name("schema_version")
		w.out = strconv.AppendUint(w.out, uint64(ev.SchemaVersion), 10)
	}
	w.str("app", ev.App)
	w.str("stream_key", ev.StreamKey)
	w.str("event_id", ev.EventId)
	w.str("client_op_id", ev.ClientOpId)
	if ev.Kind != 0 {
		w.name("kind")
		w.enum(pb.Kind_name, int32(ev.Kind))
	}
	if a := ev.Actor; a != nil {
		w.name("actor")
		w.out = append(w.out, '{')
		w.first = true
		w.str("user", a.User)
		w.str("login_id", a.LoginId)
		if a.Admin {
			w.name("admin")
			w.out = append(w.out, "true"...)
		}
		w.out = append(w.out, '}')
		w.first = false
	}
	if ev.TimeUnixMs != 0 {
		w.name("time_unix_ms")
		w.out = strconv.AppendInt(w.out, ev.TimeUnixMs, 10)
	}
	if msg != nil {
		w.name("message")
		w.out = append(w.out, '{')
		w.first = true
		if msg.ChatType != 0 {
			w.name("chat_type")
			w.enum(pb.ChatType_name, int32(msg.ChatType))
		}
		w.str("to", msg.To)
		w.str("client_msg_id", msg.ClientMsgId)
		w.str("content_type", msg.ContentType)
		if len(msg.Body) > 0 {
			w.name("body")
			w.out = append(w.out, '"')
			w.out = base64.StdEncoding.AppendEncode(w.out, msg.Body)
			w.out = append(w.out, '"')
		}
		w.str("group_id", msg.GroupId)
		w.out = append(w.out, '}')
	}
	if w.bad {
		return out[:start], false
	}
	return append(w.out, '}'), true
}

// partWriter appends the fields of one JSON object for appendEvent.
type partWriter struct {
	out   []byte
	first bool // no field of the current object written yet
	bad   bool // a string was not UTF-8
}

func (w *partWriter) name(n string) {
	if !w.first {
		w.out = append(w.out, ',')
	}
	w.first = false
	w.out = append(w.out, '"')
	w.out = append(w.out, n...)
	w.out = append(w.out, '"', ':')
}

// str writes a string field when it is set (proto3: not empty).
func (w *partWriter) str(n, v string) {
	if v == "" {
		return
	}
	w.name(n)
	b, err := appendJSONString(w.out, v)
	if err != nil {
		w.bad = true
		return
	}
	w.out = b
}

// enum writes an enum value by its name, or its number when it has none
// (as protojson does).
func (w *partWriter) enum(names map[int32]string, v int32) {
	if n, ok := names[v]; ok {
		w.out = append(w.out, '"')
		w.out = append(w.out, n...)
		w.out = append(w.out, '"')
		return
	}
	w.out = strconv.AppendInt(w.out, int64(v), 10)
}
