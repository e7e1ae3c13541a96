package projections

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Timeline entry values: what catch-up sends, stored ready to send.
//
// A catch-up reads a range of a user's timeline and sends each entry the
// device may see. It needs, per entry, only the visibility fields and the
// entry's wire form, so that is what a value holds. Every value starts
// with a marker (a protobuf message never starts with 0x00, field 0), the
// format, and a head:
//
//	0x00 <format>                         format 2 (inline) or 3 (reference)
//	uvarint kind                          the source's kind (the frame's name)
//	varint  time_unix_ms                  the source's time (retention by age)
//	uvarint chat_type, uvarint n, n bytes the conversation the entry belongs to (history index)
//	uvarint n, n bytes                    only_login_id
//	uvarint n, n bytes                    exclude_login_id
//
// Format 2 (inline) ends with the TimelineEntry in engine.MarshalPart's
// JSON form. Format 3 (reference) is the entry of a message to many (a
// group, thread or chatroom message, sharesBody): its source is stored
// once per partition in the body table (bodies.go) and the entry ends with
//
//	uvarint flags                         1: multi_device
//	uvarint n, n bytes                    from
//	varint  source_partition, varint source_offset
//	uvarint the body's partition
//	rest                                  the entry id: the source event id, the body's id
//
// so a member's entry is tens of bytes instead of a copy of the message.
// Catch-up writes its JSON from these fields around the body's bytes
// (appendWireJSON): the same bytes engine.MarshalPart writes for the
// entry, without decoding anything. The few readers that need the message
// (history, Store.Timeline) decode the JSON. Every field is a function of
// the entry, and engine.MarshalPart is deterministic for a build, so a
// rebuild writes the same bytes (invariant 2). Values written before
// (format 1: the TimelineEntry protobuf; format 2 for a message to many)
// are rewritten when a store opens (migrateTimelines), and every reader
// still accepts them.

// Format 4 (a run, runs.go) stands for several entries: consecutive seqs
// of the user, from its key's to the seq before the user's next key (or
// to the timeline's last seq), whose entries are consecutive entries of a
// conversation's run index on one partition, each a format-3 value:
//
//	0x00 4
//	uvarint partition, uvarint chat_type, uvarint n, n bytes conversation
//	uvarint ordinal                       the index entry of the run's first seq

const (
	entryFormat    = 2 // inline
	entryFormatRef = 3 // reference to a body
	entryFormatRun = 4 // a run of references to a conversation's run index
	// timelineLayout is the layout migrateTimelines brings a store to:
	// format 2, and format 3 for every message to many.
	timelineLayout = 3
)

// entryHead is a stored entry's fields read without decoding its JSON.
// The byte slices point into the value.
type entryHead struct {
	kind     pb.Kind
	time     int64
	chatType int32
	conv     []byte
	only     []byte
	exclude  []byte
	json     []byte // format 2
	proto    []byte // set instead of json for a format-1 value

	// Format 3: the entry's own fields, and the body it references
	// (the source event id, on partition bodyPart).
	ref      bool
	multi    bool
	from     []byte
	srcPart  int64
	srcOff   int64
	bodyPart int32
	id       []byte

	// Format 4: a run (kind, chatType and conv are set; no login fields).
	// Its length is not stored: the reader sets runLen (runExtent).
	run     bool
	runPart int32
	runOrd  uint64
	runLen  uint64
}

// appendRunValue appends a run's value (format 4).
func appendRunValue(b []byte, p int32, ct int32, conv string, ord uint64) []byte {
	b = append(b, 0, entryFormatRun)
	b = binary.AppendUvarint(b, uint64(p))
	b = binary.AppendUvarint(b, uint64(ct))
	b = binary.AppendUvarint(b, uint64(len(conv)))
	b = append(b, conv...)
	return binary.AppendUvarint(b, ord)
}

// parseRun reads a format-4 value.
func parseRun(v []byte) (entryHead, error) {
	h := entryHead{run: true, kind: pb.Kind_KIND_MESSAGE_SEND}
	i := 2
	x, n := binary.Uvarint(v[i:])
	if n <= 0 || x > 1<<31-1 {
		return h, errBadEntry
	}
	h.runPart, i = int32(x), i+n
	if x, n = binary.Uvarint(v[i:]); n <= 0 {
		return h, errBadEntry
	}
	h.chatType, i = int32(x), i+n
	var ok bool
	if h.conv, i, ok = lenBytes(v, i); !ok {
		return h, errBadEntry
	}
	if h.runOrd, n = binary.Uvarint(v[i:]); n <= 0 || i+n != len(v) {
		return h, errBadEntry
	}
	return h, nil
}

// visibleTo is engine.Visible on the stored fields.
func (h *entryHead) visibleTo(loginID string) bool {
	if len(h.only) > 0 {
		return string(h.only) == loginID
	}
	return len(h.exclude) == 0 || string(h.exclude) != loginID
}

// encodeEntry returns e's stored value in format 2.
func encodeEntry(e *pb.TimelineEntry) ([]byte, error) {
	return encodeEntryWith(e, nil)
}

// appendHead appends the marker, format and head of e's value.
func appendHead(b []byte, format byte, e *pb.TimelineEntry) []byte {
	src := e.GetSource()
	b = append(b, 0, format)
	b = binary.AppendUvarint(b, uint64(src.GetKind()))
	b = binary.AppendVarint(b, src.GetTimeUnixMs())
	b = binary.AppendUvarint(b, uint64(e.ChatType))
	for _, s := range []string{e.ConversationId, e.OnlyLoginId, e.ExcludeLoginId} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

// encodeEntryWith is encodeEntry given the source's wire JSON
// (engine.MarshalPart(e.Source)) when the caller has it: the copies of one
// source (a group's members) then encode it once.
func encodeEntryWith(e *pb.TimelineEntry, srcJSON []byte) ([]byte, error) {
	j, ok := entryWireJSON(e, srcJSON)
	if !ok {
		var err error
		if j, err = engine.MarshalPart(e); err != nil {
			return nil, fmt.Errorf("projections: encode entry %d: %w", e.Seq, err)
		}
	}
	b := make([]byte, 0, len(j)+32+len(e.ConversationId)+len(e.OnlyLoginId)+len(e.ExcludeLoginId))
	return append(appendHead(b, entryFormat, e), j...), nil
}

// sharesBody reports whether the entries of src are stored by reference
// to one body per partition: a message to many (a group, a thread, a
// chatroom), whose copies differ only in their recipient. A message to a
// user has at most two entries, not worth a body and the extra read per
// entry on catch-up. A function of the event, so every rebuild chooses
// alike.
func sharesBody(src *pb.Event) bool {
	if src.GetKind() != pb.Kind_KIND_MESSAGE_SEND {
		return false
	}
	switch src.GetMessage().GetChatType() {
	case pb.ChatType_CHAT_TYPE_GROUP, pb.ChatType_CHAT_TYPE_THREAD, pb.ChatType_CHAT_TYPE_CHATROOM:
		return true
	}
	return false
}

// encodeRefEntry returns e's value in format 3, referencing the body of
// its source on partition bodyPart. ok is false when the entry cannot be
// written back byte for byte from its fields (appendWireJSON: a string
// needing escaping, a chat type without a name, an entry id that is not
// the source's); the caller stores it inline.
func encodeRefEntry(e *pb.TimelineEntry, bodyPart int32) ([]byte, bool) {
	src := e.GetSource()
	if src == nil || e.EntryId == "" || e.EntryId != src.EventId || !wireable(e) {
		return nil, false
	}
	b := make([]byte, 0, 48+len(e.ConversationId)+len(e.OnlyLoginId)+len(e.ExcludeLoginId)+len(e.From)+len(e.EntryId))
	b = appendHead(b, entryFormatRef, e)
	var flags uint64
	if e.MultiDevice {
		flags |= 1
	}
	b = binary.AppendUvarint(b, flags)
	b = binary.AppendUvarint(b, uint64(len(e.From)))
	b = append(b, e.From...)
	b = binary.AppendVarint(b, int64(e.SourcePartition))
	b = binary.AppendVarint(b, e.SourceOffset)
	b = binary.AppendUvarint(b, uint64(bodyPart))
	return append(b, e.EntryId...), true
}

// refFields are all encodeRefEntry reads of an entry and its body's
// partition: entries with equal fields have equal values (and ok). Not
// the seq, nor the recipient: the members' copies of one group message
// have equal fields.
type refFields struct {
	kind                                 pb.Kind
	time, srcOff                         int64
	ct                                   pb.ChatType
	conv, only, exclude, from, id, srcID string
	multi                                bool
	srcPart, bodyPart                    int32
}

// refEncoder is encodeRefEntry remembering its last answer: a partition
// copy's members encode the one value once instead of once each. The
// value is shared by the keys it is written to; nothing changes a
// written value in place.
type refEncoder struct {
	f   refFields
	v   []byte
	ok  bool
	set bool
}

// encode is encodeRefEntry(e, bodyPart).
func (c *refEncoder) encode(e *pb.TimelineEntry, bodyPart int32) ([]byte, bool) {
	src := e.GetSource()
	if src == nil {
		return nil, false
	}
	f := refFields{kind: src.Kind, time: src.TimeUnixMs, srcOff: e.SourceOffset, ct: e.ChatType, conv: e.ConversationId,
		only: e.OnlyLoginId, exclude: e.ExcludeLoginId, from: e.From, id: e.EntryId, srcID: src.EventId,
		multi: e.MultiDevice, srcPart: e.SourcePartition, bodyPart: bodyPart}
	if !c.set || f != c.f {
		c.v, c.ok = encodeRefEntry(e, bodyPart)
		c.f, c.set = f, true
	}
	return c.v[:len(c.v):len(c.v)], c.ok // an append to one copy does not reach the others
}

// wireFields are a TimelineEntry's own fields (all but the source), as
// appendWireJSON writes them.
type wireFields struct {
	seq                                uint64
	entryID, from, exclude, only, conv []byte
	multi                              bool
	srcPart, srcOff                    int64
	chatType                           int32
}

// wireable reports whether appendWireJSON writes e as MarshalPart does.
func wireable(e *pb.TimelineEntry) bool {
	for _, s := range []string{e.EntryId, e.From, e.ExcludeLoginId, e.OnlyLoginId, e.ConversationId} {
		if !plainJSON(s) {
			return false
		}
	}
	return e.ChatType == 0 || pb.ChatType_name[int32(e.ChatType)] != ""
}

// entryWireJSON is engine.MarshalPart(e), byte for byte, written around the
// source's part srcJSON. ok is false (use MarshalPart) without srcJSON, or
// when e is not wireable.
func entryWireJSON(e *pb.TimelineEntry, srcJSON []byte) ([]byte, bool) {
	if srcJSON == nil || e.Source == nil || !wireable(e) {
		return nil, false
	}
	f := wireFields{seq: e.Seq, entryID: []byte(e.EntryId), from: []byte(e.From), exclude: []byte(e.ExcludeLoginId),
		only: []byte(e.OnlyLoginId), conv: []byte(e.ConversationId), multi: e.MultiDevice,
		srcPart: int64(e.SourcePartition), srcOff: e.SourceOffset, chatType: int32(e.ChatType)}
	b := make([]byte, 0, len(srcJSON)+128+len(e.EntryId)+len(e.From)+len(e.ConversationId))
	return appendWireJSON(b, &f, srcJSON), true
}

// appendWireJSON appends the entry's JSON as engine.MarshalPart writes it
// (for fields wireable accepts): its own fields in declaration order, zero
// values left out and 64-bit integers as numbers, the source's part srcJSON
// in its place.
func appendWireJSON(b []byte, f *wireFields, srcJSON []byte) []byte {
	start := len(b)
	b = append(b, '{')
	sep := func(name string) {
		if len(b) > start+1 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	str := func(name string, v []byte) {
		if len(v) > 0 {
			sep(name)
			b = append(b, '"')
			b = append(b, v...)
			b = append(b, '"')
		}
	}
	if f.seq != 0 {
		sep("seq")
		b = strconv.AppendUint(b, f.seq, 10)
	}
	str("entry_id", f.entryID)
	str("from", f.from)
	if f.multi {
		sep("multi_device")
		b = append(b, "true"...)
	}
	str("exclude_login_id", f.exclude)
	str("only_login_id", f.only)
	sep("source")
	b = append(b, srcJSON...)
	if f.srcPart != 0 {
		sep("source_partition")
		b = strconv.AppendInt(b, f.srcPart, 10)
	}
	if f.srcOff != 0 {
		sep("source_offset")
		b = strconv.AppendInt(b, f.srcOff, 10)
	}
	str("conversation_id", f.conv)
	if f.chatType != 0 {
		sep("chat_type")
		b = append(b, '"')
		b = append(b, pb.ChatType_name[f.chatType]...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// plainJSON reports whether s is written in JSON as it is (ids: letters,
// digits and _.-@, a thread's group/thread).
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-' || c == '@' || c == '/') {
			return false
		}
	}
	return true
}

var errBadEntry = errors.New("projections: malformed timeline entry value")

// parseEntry reads a stored value's fields; the JSON is not decoded.
func parseEntry(v []byte) (entryHead, error) {
	var h entryHead
	if len(v) == 0 || v[0] != 0 {
		// Format 1: the protobuf entry. Only a store not yet migrated
		// holds one; read what the head needs from it.
		e := &pb.TimelineEntry{}
		if err := proto.Unmarshal(v, e); err != nil {
			return h, fmt.Errorf("projections: decode entry: %w", err)
		}
		h = entryHead{kind: e.GetSource().GetKind(), time: e.GetSource().GetTimeUnixMs(), chatType: int32(e.ChatType),
			conv: []byte(e.ConversationId), only: []byte(e.OnlyLoginId), exclude: []byte(e.ExcludeLoginId), proto: v}
		return h, nil
	}
	if len(v) >= 2 && v[1] == entryFormatRun {
		return parseRun(v)
	}
	if len(v) < 2 || (v[1] != entryFormat && v[1] != entryFormatRef) {
		return h, errBadEntry
	}
	// Straight-line reads, no closures: this runs for every entry a
	// catch-up scans.
	i := 2
	x, n := binary.Uvarint(v[i:])
	if n <= 0 {
		return h, errBadEntry
	}
	h.kind, i = pb.Kind(x), i+n
	t, n := binary.Varint(v[i:])
	if n <= 0 {
		return h, errBadEntry
	}
	h.time, i = t, i+n
	if x, n = binary.Uvarint(v[i:]); n <= 0 {
		return h, errBadEntry
	}
	h.chatType, i = int32(x), i+n
	var ok bool
	if h.conv, i, ok = lenBytes(v, i); !ok {
		return h, errBadEntry
	}
	if h.only, i, ok = lenBytes(v, i); !ok {
		return h, errBadEntry
	}
	if h.exclude, i, ok = lenBytes(v, i); !ok {
		return h, errBadEntry
	}
	if v[1] == entryFormat {
		h.json = v[i:]
		return h, nil
	}
	h.ref = true
	if x, n = binary.Uvarint(v[i:]); n <= 0 {
		return h, errBadEntry
	}
	h.multi, i = x&1 != 0, i+n
	if h.from, i, ok = lenBytes(v, i); !ok {
		return h, errBadEntry
	}
	if h.srcPart, n = binary.Varint(v[i:]); n <= 0 {
		return h, errBadEntry
	}
	i += n
	if h.srcOff, n = binary.Varint(v[i:]); n <= 0 {
		return h, errBadEntry
	}
	i += n
	if x, n = binary.Uvarint(v[i:]); n <= 0 || x > 1<<31-1 {
		return h, errBadEntry
	}
	h.bodyPart, i = int32(x), i+n
	if i >= len(v) {
		return h, errBadEntry // no id
	}
	h.id = v[i:]
	return h, nil
}

// lenBytes reads a uvarint length and that many bytes at v[i:].
func lenBytes(v []byte, i int) ([]byte, int, bool) {
	x, n := binary.Uvarint(v[i:])
	if n <= 0 || x > uint64(len(v)-i-n) {
		return nil, i, false
	}
	i += n
	return v[i : i+int(x) : i+int(x)], i + int(x), true
}

// refJSON appends a format-3 entry's wire form (engine.MarshalPart of the
// entry at seq) to b, given its body (the source's wire JSON).
func (h *entryHead) refJSON(b []byte, seq uint64, body []byte) []byte {
	f := wireFields{seq: seq, entryID: h.id, from: h.from, exclude: h.exclude, only: h.only, conv: h.conv,
		multi: h.multi, srcPart: h.srcPart, srcOff: h.srcOff, chatType: h.chatType}
	return appendWireJSON(b, &f, body)
}

// entryJSON is the wire form (engine.MarshalPart) of a format-1 or
// format-2 value's entry, without decoding a format-2 value. A format-3
// value needs its body: see Store.entryJSON.
func (h *entryHead) entryJSON() ([]byte, error) {
	if h.ref || h.run {
		return nil, errors.New("projections: entry references a body")
	}
	if h.proto == nil {
		return h.json, nil
	}
	e := &pb.TimelineEntry{}
	if err := proto.Unmarshal(h.proto, e); err != nil {
		return nil, fmt.Errorf("projections: decode entry: %w", err)
	}
	return engine.MarshalPart(e)
}

// decodeEntryJSON decodes an entry's wire form.
func decodeEntryJSON(j []byte) (*pb.TimelineEntry, error) {
	e := &pb.TimelineEntry{}
	if err := protojson.Unmarshal(j, e); err != nil {
		return nil, fmt.Errorf("projections: decode entry: %w", err)
	}
	return e, nil
}
