package bus

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"google.golang.org/protobuf/proto"

	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// EffectKind says what an Effect asks the edges to do.
type EffectKind uint8

const (
	// EffectDeliver: Entry was appended to User's timeline; push it to
	// User's connected devices (or to the push outbox when none is).
	EffectDeliver EffectKind = iota + 1
	// EffectEnded: an operation ended the session in Ended; tell that
	// device (kicked frame with Ended.Code) and close its connection.
	EffectEnded
)

func (k EffectKind) String() string {
	switch k {
	case EffectDeliver:
		return "deliver"
	case EffectEnded:
		return "ended"
	}
	return "unknown(" + strconv.Itoa(int(k)) + ")"
}

// Effect is one thing the projector's committed batch asks the edges to do.
// Delivery is at-least-once: after a crash the projector reports re-applied
// batches again, and a transport may redeliver; devices drop duplicate
// entries by Entry.Seq, and ending a session twice is harmless.
type Effect struct {
	Kind      EffectKind
	App, User string
	// Entry (EffectDeliver) is a timeline entry appended to User's timeline.
	Entry *pb.TimelineEntry
	// Epoch (EffectDeliver) is the timeline epoch Entry.Seq belongs to, if
	// known; "" otherwise (projections.Applied does not carry it yet).
	Epoch string
	// Ended (EffectEnded) is a session that an operation ended (kick
	// 206/207/216/217, logout code 0).
	Ended *pb.Ended
}

// EffectsOf turns one committed projection batch into effects: first every
// ended session, in decision order, then every appended entry, in append
// order. Ended first because Applied does not say how decisions and entries
// interleaved in the log, and a device whose session ended must not be sent
// anything more; an entry it misses that way stays in its timeline.
func EffectsOf(a projections.Applied) []Effect {
	n := len(a.Entries)
	for _, d := range a.Decisions {
		n += len(d.GetEnded())
	}
	if n == 0 {
		return nil
	}
	out := make([]Effect, 0, n)
	for _, d := range a.Decisions {
		for _, e := range d.GetEnded() {
			user := e.GetUser()
			if user == "" {
				user = d.GetUser()
			}
			out = append(out, Effect{Kind: EffectEnded, App: d.GetApp(), User: user, Ended: e})
		}
	}
	for _, e := range a.Entries {
		out = append(out, Effect{Kind: EffectDeliver, App: e.App, User: e.User, Entry: e.Entry})
	}
	return out
}

// Message metadata keys of an encoded Effect. The payload is the proto
// encoding of Entry (deliver) or Ended (ended).
const (
	metaKind  = "kind"
	metaApp   = "app"
	metaUser  = "user"
	metaEpoch = "epoch"
	metaTime  = "time_ms" // eventTimeMs, for readers of the topic that do not decode
)

// ErrMalformed is returned for a message that is not an encoded Effect.
var ErrMalformed = errors.New("bus: malformed effect message")

// id is the message UUID of e: deterministic (a hash of what identifies
// the effect), so that the same effect reported again after a crash, or
// redelivered, carries the same id and duplicates can be told apart in
// logs (and dropped by an id-based deduplicator if one is ever wanted).
func (e Effect) id() string {
	h := sha256.New()
	switch e.Kind {
	case EffectDeliver:
		// entry_id is unique per user; seq too, within an epoch.
		fmt.Fprintf(h, "d\x00%s\x00%s\x00%s\x00%d", e.App, e.User, e.Entry.GetEntryId(), e.Entry.GetSeq())
	default:
		s := e.Ended
		fmt.Fprintf(h, "e\x00%s\x00%s\x00%s\x00%d\x00%d", e.App, e.User, s.GetSession().GetLoginId(), s.GetPartition(), s.GetOffset())
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// encode turns e into a Watermill message.
func encode(e Effect) (*message.Message, error) {
	var body proto.Message
	switch e.Kind {
	case EffectDeliver:
		if e.Entry == nil {
			return nil, fmt.Errorf("bus: deliver effect for %s/%s has no entry", e.App, e.User)
		}
		body = e.Entry
	case EffectEnded:
		if e.Ended == nil {
			return nil, fmt.Errorf("bus: ended effect for %s/%s has no session", e.App, e.User)
		}
		body = e.Ended
	default:
		return nil, fmt.Errorf("bus: effect kind %d is not deliver or ended", e.Kind)
	}
	b, err := proto.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("bus: encode %s effect: %w", e.Kind, err)
	}
	m := message.NewMessage(e.id(), b)
	m.Metadata.Set(metaKind, e.Kind.String())
	m.Metadata.Set(metaApp, e.App)
	m.Metadata.Set(metaUser, e.User)
	if e.Epoch != "" {
		m.Metadata.Set(metaEpoch, e.Epoch)
	}
	if ms := e.eventTimeMs(); ms > 0 {
		m.Metadata.Set(metaTime, strconv.FormatInt(ms, 10))
	}
	return m, nil
}

// decode is encode's inverse; each call returns fresh protos, so handlers
// never share (or mutate) one another's.
func decode(m *message.Message) (Effect, error) {
	e := Effect{App: m.Metadata.Get(metaApp), User: m.Metadata.Get(metaUser), Epoch: m.Metadata.Get(metaEpoch)}
	var err error
	switch k := m.Metadata.Get(metaKind); k {
	case EffectDeliver.String():
		e.Kind, e.Entry = EffectDeliver, &pb.TimelineEntry{}
		err = proto.Unmarshal(m.Payload, e.Entry)
	case EffectEnded.String():
		e.Kind, e.Ended = EffectEnded, &pb.Ended{}
		err = proto.Unmarshal(m.Payload, e.Ended)
	default:
		return Effect{}, fmt.Errorf("%w: kind %q (message %s)", ErrMalformed, k, m.UUID)
	}
	if err != nil {
		return Effect{}, fmt.Errorf("%w: %s payload of message %s: %v", ErrMalformed, e.Kind, m.UUID, err)
	}
	return e, nil
}

// eventTimeMs is when the operation behind e was accepted (the engine's
// clock at append), 0 if unknown.
func (e Effect) eventTimeMs() int64 {
	if e.Kind == EffectDeliver {
		return e.Entry.GetSource().GetTimeUnixMs()
	}
	return e.Ended.GetTimeUnixMs()
}
