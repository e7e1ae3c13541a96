package engine

import (
	"errors"

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
func MarshalPart(m proto.Message) ([]byte, error) {
	b, err := partOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	return numbers64(b, m.ProtoReflect().Descriptor())
}

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
