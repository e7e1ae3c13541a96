package projections

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Timeline entry values: what catch-up sends, stored ready to send.
//
// A catch-up reads a range of a user's timeline and sends each entry the
// device may see. It needs, per entry, only the visibility fields and the
// entry's wire form, so that is what a value holds (format 2):
//
//	0x00 0x02                             marker: a protobuf message never starts with 0x00 (field 0)
//	uvarint kind                          the source's kind (the frame's name)
//	varint  time_unix_ms                  the source's time (retention by age)
//	uvarint chat_type, uvarint n, n bytes the conversation the entry belongs to (history index)
//	uvarint n, n bytes                    only_login_id
//	uvarint n, n bytes                    exclude_login_id
//	rest                                  the TimelineEntry in engine.MarshalPart's JSON form
//
// Catch-up copies the JSON into the frame without decoding it
// (Store.TimelineJSON); the few readers that need the message (history,
// Store.Timeline) decode the JSON. Every field is a function of the entry,
// and engine.MarshalPart is deterministic for a build, so a rebuild writes
// the same bytes (invariant 2). Values written before this format (format
// 1: the TimelineEntry protobuf) are rewritten in format 2 when a store
// opens (migrateTimelines), and every reader still accepts them.

const entryFormat = 2

// entryHead is a stored entry's fields read without decoding its JSON.
// The byte slices point into the value.
type entryHead struct {
	kind     pb.Kind
	time     int64
	chatType int32
	conv     []byte
	only     []byte
	exclude  []byte
	json     []byte
	proto    []byte // set instead of json for a format-1 value
}

// visibleTo is engine.Visible on the stored fields.
func (h *entryHead) visibleTo(loginID string) bool {
	if len(h.only) > 0 {
		return string(h.only) == loginID
	}
	return len(h.exclude) == 0 || string(h.exclude) != loginID
}

// encodeEntry returns e's stored value.
func encodeEntry(e *pb.TimelineEntry) ([]byte, error) {
	return encodeEntryWith(e, nil)
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
	src := e.GetSource()
	b := make([]byte, 0, len(j)+32+len(e.ConversationId)+len(e.OnlyLoginId)+len(e.ExcludeLoginId))
	b = append(b, 0, entryFormat)
	b = binary.AppendUvarint(b, uint64(src.GetKind()))
	b = binary.AppendVarint(b, src.GetTimeUnixMs())
	b = binary.AppendUvarint(b, uint64(e.ChatType))
	for _, s := range []string{e.ConversationId, e.OnlyLoginId, e.ExcludeLoginId} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return append(b, j...), nil
}

// entryWireJSON is engine.MarshalPart(e), byte for byte, written around the
// source's part srcJSON: the entry's own fields in declaration order, zero
// values left out and 64-bit integers as numbers, as MarshalPart writes
// them. ok is false (use MarshalPart) without srcJSON, or when a string
// would need escaping or the chat type has no name.
func entryWireJSON(e *pb.TimelineEntry, srcJSON []byte) ([]byte, bool) {
	if srcJSON == nil || e.Source == nil {
		return nil, false
	}
	for _, s := range []string{e.EntryId, e.From, e.ExcludeLoginId, e.OnlyLoginId, e.ConversationId} {
		if !plainJSON(s) {
			return nil, false
		}
	}
	ct := ""
	if e.ChatType != 0 {
		if ct = pb.ChatType_name[int32(e.ChatType)]; ct == "" {
			return nil, false
		}
	}
	b := make([]byte, 0, len(srcJSON)+128+len(e.EntryId)+len(e.From)+len(e.ConversationId))
	b = append(b, '{')
	sep := func(name string) {
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	str := func(name, v string) {
		if v != "" {
			sep(name)
			b = append(b, '"')
			b = append(b, v...)
			b = append(b, '"')
		}
	}
	if e.Seq != 0 {
		sep("seq")
		b = strconv.AppendUint(b, e.Seq, 10)
	}
	str("entry_id", e.EntryId)
	str("from", e.From)
	if e.MultiDevice {
		sep("multi_device")
		b = append(b, "true"...)
	}
	str("exclude_login_id", e.ExcludeLoginId)
	str("only_login_id", e.OnlyLoginId)
	sep("source")
	b = append(b, srcJSON...)
	if e.SourcePartition != 0 {
		sep("source_partition")
		b = strconv.AppendInt(b, int64(e.SourcePartition), 10)
	}
	if e.SourceOffset != 0 {
		sep("source_offset")
		b = strconv.AppendInt(b, e.SourceOffset, 10)
	}
	str("conversation_id", e.ConversationId)
	str("chat_type", ct)
	return append(b, '}'), true
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
	if len(v) < 2 || v[1] != entryFormat {
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
	h.json = v[i:]
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

// entryJSON is the entry's wire form (engine.MarshalPart), without
// decoding a format-2 value.
func (h *entryHead) entryJSON() ([]byte, error) {
	if h.proto == nil {
		return h.json, nil
	}
	e := &pb.TimelineEntry{}
	if err := proto.Unmarshal(h.proto, e); err != nil {
		return nil, fmt.Errorf("projections: decode entry: %w", err)
	}
	return engine.MarshalPart(e)
}

// decodeEntry decodes a stored value into the entry.
func decodeEntry(v []byte) (*pb.TimelineEntry, error) {
	h, err := parseEntry(v)
	if err != nil {
		return nil, err
	}
	e := &pb.TimelineEntry{}
	if h.proto != nil {
		return e, proto.Unmarshal(h.proto, e)
	}
	if err := protojson.Unmarshal(h.json, e); err != nil {
		return nil, fmt.Errorf("projections: decode entry: %w", err)
	}
	return e, nil
}

// timelineLayoutKey marks a store whose timeline values are all in format
// 2. It is in the operational table: the layout of the bytes, not state.
var timelineLayoutKey = key(tagOperational, "layout", "timeline")

// migrateTimelines rewrites format-1 timeline values in format 2, once per
// store (then it sets timelineLayoutKey), before anything applies or
// reads. The rewrite is a function of each value, so the result is what a
// rebuild from offset 0 writes, and the digest of a migrated store equals
// the rebuild's. Interrupted, it starts over on the next open and skips
// the values already rewritten.
func migrateTimelines(db *pebble.DB) (int, error) {
	if _, closer, err := db.Get(timelineLayoutKey); err == nil {
		return 0, closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return 0, fmt.Errorf("projections: read timeline layout: %w", err)
	}
	prefix := []byte{tagTimeline, 0}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	n := 0
	b := db.NewBatch()
	for it.First(); it.Valid(); it.Next() {
		v := it.Value()
		if len(v) > 0 && v[0] == 0 {
			continue // format 2 already
		}
		e := &pb.TimelineEntry{}
		if err := proto.Unmarshal(v, e); err != nil {
			b.Close()
			return n, fmt.Errorf("projections: migrate %q: %w", it.Key(), err)
		}
		nv, err := encodeEntry(e)
		if err != nil {
			b.Close()
			return n, err
		}
		if err := b.Set(it.Key(), nv, nil); err != nil {
			b.Close()
			return n, err
		}
		if n++; b.Len() > 4<<20 {
			if err := commitClose(b); err != nil {
				return n, err
			}
			b = db.NewBatch()
		}
	}
	if err := it.Error(); err != nil {
		b.Close()
		return n, err
	}
	if err := b.Set(timelineLayoutKey, []byte{entryFormat}, nil); err != nil {
		b.Close()
		return n, err
	}
	return n, commitClose(b)
}

func commitClose(b *pebble.Batch) error {
	err := b.Commit(pebble.Sync)
	if cerr := b.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("projections: migrate timelines: %w", err)
	}
	return nil
}
