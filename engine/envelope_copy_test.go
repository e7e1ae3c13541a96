package engine

import (
	"bytes"
	"testing"
	"time"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// envelope copies every field of the op into the event it returns: the
// same event, and the same record bytes, as a deep copy with the envelope
// fields set. Every field of Event is set (one payload at a time, and an
// unknown field), so a field added to Event and not copied fails here.
func TestEnvelopeCopiesEveryField(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_123)
	e := New(nil, nil, Options{Now: func() time.Time { return at }})
	fields := (&pb.Event{}).ProtoReflect().Descriptor().Fields()
	oneof := (&pb.Event{}).ProtoReflect().Descriptor().Oneofs().ByName("payload")
	if oneof == nil {
		t.Fatal("Event has no payload oneof")
	}
	for i := 0; i < oneof.Fields().Len(); i++ {
		payload := oneof.Fields().Get(i)
		op := &pb.Event{}
		m := op.ProtoReflect()
		for j := 0; j < fields.Len(); j++ {
			fd := fields.Get(j)
			if fd.ContainingOneof() != nil && fd != payload {
				continue
			}
			m.Set(fd, someValue(m, fd))
		}
		var unknown []byte
		unknown = protowire.AppendTag(unknown, 999, protowire.BytesType)
		unknown = protowire.AppendString(unknown, "later")
		m.SetUnknown(unknown)
		op.Actor = &pb.Actor{User: "u", LoginId: "d"}

		want := proto.Clone(op).(*pb.Event)
		want.SchemaVersion = SchemaVersion
		want.StreamKey = "stream"
		want.EventId = EventID("stream", op.Actor.User, op.ClientOpId)
		want.TimeUnixMs = at.UnixMilli()
		got := e.envelope(op, "stream")
		if !proto.Equal(got, want) {
			t.Fatalf("payload %s: envelope gave\n%v\nwant\n%v", payload.Name(), got, want)
		}
		gb, err := Encode(got)
		if err != nil {
			t.Fatal(err)
		}
		wb, _ := Encode(want)
		if !bytes.Equal(gb, wb) {
			t.Fatalf("payload %s: the records differ", payload.Name())
		}
	}
}

// someValue is a value of fd other than its zero value.
func someValue(m protoreflect.Message, fd protoreflect.FieldDescriptor) protoreflect.Value {
	if fd.IsList() || fd.IsMap() {
		panic("Event has no list or map field: extend someValue")
	}
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(7)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(7)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(7)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("v-" + string(fd.Name()))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte("v-" + string(fd.Name())))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return protoreflect.ValueOfMessage(m.NewField(fd).Message())
	}
	panic("unexpected kind " + fd.Kind().String())
}
