package engine

import (
	"unicode/utf8"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protowire"
)

// decodeEvent is proto.Unmarshal of a log record for the shapes nearly
// every record has (issue 12: the projector decodes every record, and
// proto.Unmarshal's table-driven path was a sixth of applying a login):
// the envelope's fields, the actor, and a payload that is a login, a kick,
// a message or a delivered copy (whose source is decoded the same way).
// It gives up (false) on anything else: an unknown or repeated field, an
// unexpected wire type, a string that is not UTF-8, another payload. The
// caller then takes proto.Unmarshal, so what a record decodes to, unknown
// fields and errors included, is always proto.Unmarshal's
// (FuzzDecodeEvent).
func decodeEvent(b []byte, depth int) (*pb.Event, bool) {
	d := &strs{}
	if len(b) <= sharedRecordMax {
		d.s, d.cap, d.shared = string(b), cap(b), true
	}
	return d.event(b, depth)
}

// sharedRecordMax bounds the records whose strings share one copy: a
// string of the event (a login ID a cached session keeps, a decision's op
// id in the hand-off ring) keeps the whole copy alive, so a large record
// (a message body up to 64 KiB) gets a copy per string instead.
const sharedRecordMax = 512

// strs gives the strings of one record as substrings of one copy of it
// (one allocation per record, not one per string field: the allocations
// were what proto.Unmarshal spent most on).
type strs struct {
	s      string // the record, when shared
	cap    int    // cap of the record's slice: v's offset is cap - cap(v)
	shared bool
}

// str is a proto3 string field: refused unless UTF-8, as proto.Unmarshal
// refuses it.
func (d *strs) str(b []byte) (string, []byte, bool) {
	v, rest, ok := bytesField(b)
	if !ok || !utf8.Valid(v) {
		return "", nil, false
	}
	if len(v) == 0 {
		return "", rest, true
	}
	if !d.shared {
		return string(v), rest, true
	}
	off := d.cap - cap(v)
	return d.s[off : off+len(v)], rest, true
}

func (d *strs) event(b []byte, depth int) (*pb.Event, bool) {
	ev := &pb.Event{}
	var seen uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > 63 || seen&(1<<num) != 0 {
			return nil, false
		}
		seen |= 1 << num
		b = b[n:]
		var ok bool
		switch {
		case typ == protowire.VarintType && (num == 1 || num == 6 || num == 8):
			var v uint64
			if v, b, ok = varint(b); !ok {
				return nil, false
			}
			switch num {
			case 1:
				ev.SchemaVersion = uint32(v)
			case 6:
				ev.Kind = pb.Kind(int32(v))
			case 8:
				ev.TimeUnixMs = int64(v)
			}
		case typ == protowire.BytesType && num >= 2 && num <= 5:
			var s string
			if s, b, ok = d.str(b); !ok {
				return nil, false
			}
			switch num {
			case 2:
				ev.App = s
			case 3:
				ev.StreamKey = s
			case 4:
				ev.EventId = s
			case 5:
				ev.ClientOpId = s
			}
		case typ == protowire.BytesType && num == 7:
			var v []byte
			if v, b, ok = bytesField(b); !ok {
				return nil, false
			}
			if ev.Actor, ok = d.actor(v); !ok {
				return nil, false
			}
		case typ == protowire.BytesType && (num == 20 || num == 21 || num == 23 || num == 31):
			if ev.Payload != nil {
				return nil, false // a second payload field: proto.Unmarshal's rules
			}
			var v []byte
			if v, b, ok = bytesField(b); !ok {
				return nil, false
			}
			switch num {
			case 20:
				var l *pb.Login
				if l, ok = d.login(v); ok {
					ev.Payload = &pb.Event_Login{Login: l}
				}
			case 21:
				var k *pb.KickDevice
				if k, ok = d.kick(v); ok {
					ev.Payload = &pb.Event_KickDevice{KickDevice: k}
				}
			case 23:
				var m *pb.MessageSend
				if m, ok = d.message(v); ok {
					ev.Payload = &pb.Event_Message{Message: m}
				}
			case 31:
				var dl *pb.Deliver
				if dl, ok = d.deliver(v, depth); ok {
					ev.Payload = &pb.Event_Deliver{Deliver: dl}
				}
			}
			if !ok {
				return nil, false
			}
		default:
			return nil, false
		}
	}
	return ev, true
}

func varint(b []byte) (uint64, []byte, bool) {
	v, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return 0, nil, false
	}
	return v, b[n:], true
}

func bytesField(b []byte) ([]byte, []byte, bool) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return nil, nil, false
	}
	return v, b[n:], true
}

// fields walks the fields of one small message: each field number at most
// once, and field(num, typ, b) consumes the field's value from b.
func fields(b []byte, field func(num protowire.Number, typ protowire.Type, b []byte) ([]byte, bool)) bool {
	var seen uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > 63 || seen&(1<<num) != 0 {
			return false
		}
		seen |= 1 << num
		var ok bool
		if b, ok = field(num, typ, b[n:]); !ok {
			return false
		}
	}
	return true
}

func (d *strs) actor(b []byte) (*pb.Actor, bool) {
	a := &pb.Actor{}
	return a, fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (rest []byte, ok bool) {
		switch {
		case typ == protowire.BytesType && num == 1:
			a.User, rest, ok = d.str(b)
		case typ == protowire.BytesType && num == 2:
			a.LoginId, rest, ok = d.str(b)
		case typ == protowire.VarintType && num == 3:
			var v uint64
			v, rest, ok = varint(b)
			a.Admin = v != 0
		}
		return rest, ok
	})
}

func (d *strs) login(b []byte) (*pb.Login, bool) {
	l := &pb.Login{}
	return l, fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (rest []byte, ok bool) {
		switch {
		case typ == protowire.VarintType && num == 1:
			var v uint64
			v, rest, ok = varint(b)
			l.Platform = int32(v)
		case typ == protowire.BytesType && num == 2:
			l.LoginId, rest, ok = d.str(b)
		case typ == protowire.BytesType && num == 3:
			l.DeviceName, rest, ok = d.str(b)
		case typ == protowire.BytesType && num == 4:
			l.Extension, rest, ok = d.str(b)
		case typ == protowire.VarintType && num == 5:
			var v uint64
			v, rest, ok = varint(b)
			l.AutoLogin = v != 0
		}
		return rest, ok
	})
}

func (d *strs) kick(b []byte) (*pb.KickDevice, bool) {
	k := &pb.KickDevice{}
	return k, fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (rest []byte, ok bool) {
		if typ == protowire.BytesType && num == 1 {
			k.LoginId, rest, ok = d.str(b)
		}
		return rest, ok
	})
}

func (d *strs) message(b []byte) (*pb.MessageSend, bool) {
	m := &pb.MessageSend{}
	return m, fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (rest []byte, ok bool) {
		switch {
		case typ == protowire.VarintType && num == 1:
			var v uint64
			v, rest, ok = varint(b)
			m.ChatType = pb.ChatType(int32(v))
		case typ == protowire.BytesType && num == 2:
			m.To, rest, ok = d.str(b)
		case typ == protowire.BytesType && num == 3:
			m.ClientMsgId, rest, ok = d.str(b)
		case typ == protowire.BytesType && num == 4:
			m.ContentType, rest, ok = d.str(b)
		case typ == protowire.BytesType && num == 5:
			var v []byte
			v, rest, ok = bytesField(b)
			if len(v) > 0 {
				m.Body = append([]byte(nil), v...) // the record's buffer is not ours to keep
			}
		case typ == protowire.BytesType && num == 6:
			m.GroupId, rest, ok = d.str(b)
		}
		return rest, ok
	})
}

// decodeDeliver decodes a delivered copy; its source event one level
// down, no further (a source is never itself a copy).
func (ds *strs) deliver(b []byte, depth int) (*pb.Deliver, bool) {
	d := &pb.Deliver{}
	var recipients bool
	ok := fields(b, func(num protowire.Number, typ protowire.Type, b []byte) (rest []byte, ok bool) {
		switch {
		case typ == protowire.BytesType && num == 1:
			d.Recipient, rest, ok = ds.str(b)
		case typ == protowire.BytesType && num == 2:
			d.From, rest, ok = ds.str(b)
		case typ == protowire.VarintType && num == 3:
			var v uint64
			v, rest, ok = varint(b)
			d.MultiDevice = v != 0
		case typ == protowire.BytesType && num == 4:
			d.ExcludeLoginId, rest, ok = ds.str(b)
		case typ == protowire.BytesType && num == 5:
			d.OnlyLoginId, rest, ok = ds.str(b)
		case typ == protowire.BytesType && num == 6 && depth == 0:
			var v []byte
			if v, rest, ok = bytesField(b); ok {
				d.Source, ok = ds.event(v, depth+1)
			}
		case typ == protowire.VarintType && num == 7:
			var v uint64
			v, rest, ok = varint(b)
			d.SourcePartition = int32(v)
		case typ == protowire.VarintType && num == 8:
			var v uint64
			v, rest, ok = varint(b)
			d.SourceOffset = int64(v)
		case typ == protowire.BytesType && num == 9 && !recipients:
			// A repeated field: its elements are consecutive in what
			// Encode writes; anything else goes to proto.Unmarshal.
			recipients, rest, ok = true, b, true
			for ok {
				var s string
				if s, rest, ok = ds.str(rest); !ok {
					return nil, false
				}
				d.Recipients = append(d.Recipients, s)
				num2, typ2, n := protowire.ConsumeTag(rest)
				if n < 0 || num2 != 9 || typ2 != protowire.BytesType {
					break
				}
				rest = rest[n:]
			}
		}
		return rest, ok
	})
	return d, ok
}
