package projections

import (
	"encoding/binary"
)

// Key layout. Every key starts with a one-byte table tag and a NUL; ids
// never contain NUL (engine.ValidID), so prefixes cannot collide.
//
//	c 0 <p:4>                                   checkpoint of partition p
//	s 0 <app> 0 <user>                          sessions of a user
//	P 0 <app> 0 <p:4>                           the app's policy as partition p sees it
//	d 0 <stream> 0 <user> 0 <op>                decision of an operation
//	a 0 <app> 0 <user> 0 <p:4> <off:8> <i:2>    audit: a session ended
//	e 0 <app> 0 <user> 0 <login>                how a login ID's session ended (the latest)
//	A 0 <app> 0 <user>                          a user's account (password hash, credential epoch)
const (
	tagCheckpoint = 'c'
	tagSessions   = 's'
	tagPolicy     = 'P'
	tagDecision   = 'd'
	tagAudit      = 'a'
	tagEnded      = 'e'
	tagAccount    = 'A'
)

func accountKey(app, user string) []byte { return key(tagAccount, app, user) }

func endedKey(app, user, loginID string) []byte { return key(tagEnded, app, user, loginID) }

func key(tag byte, parts ...string) []byte {
	n := 2
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n)
	k = append(k, tag, 0)
	for i, p := range parts {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, p...)
	}
	return k
}

func checkpointKey(p int32) []byte {
	return binary.BigEndian.AppendUint32([]byte{tagCheckpoint, 0}, uint32(p))
}

func sessionsKey(app, user string) []byte { return key(tagSessions, app, user) }

func policyKey(app string, p int32) []byte {
	return binary.BigEndian.AppendUint32(append(key(tagPolicy, app), 0), uint32(p))
}

func decisionKey(stream, user, op string) []byte { return key(tagDecision, stream, user, op) }

func auditPrefix(app, user string) []byte { return append(key(tagAudit, app, user), 0) }

func auditKey(app, user string, p int32, off int64, i int) []byte {
	k := auditPrefix(app, user)
	k = binary.BigEndian.AppendUint32(k, uint32(p))
	k = binary.BigEndian.AppendUint64(k, uint64(off))
	return binary.BigEndian.AppendUint16(k, uint16(i))
}

// prefixEnd returns the smallest key greater than every key with prefix.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// Sync tables.
//
//	t 0 <app> 0 <user> 0 <seq:8>                     timeline entry
//	T 0 <app> 0 <user>                               timeline bounds and epoch
//	h 0 <app> 0 <user> 0 <ct:1><conv> 0 <seq:8>      history index (messages per conversation)
//	C 0 <app> 0 <user>                               contacts
//	v 0 <app> 0 <user> 0 <ct:1><conv>                conversation state
//	U 0 <app> 0 <user>                               the user's groups and threads
//	G 0 <app> 0 <group>                              group (with its threads)
//	R 0 <app> 0 <room>                               chatroom membership
//	b 0 <app> 0 <event id> 0 <p:4>                   body: a message to many, once per partition (bodies.go)
//	B 0 <app> 0 <event id> 0 <p:4>                   the body's reference count (8 bytes), and its run index key
//	g 0 <app> 0 <ct:1><conv> 0 <p:4>                 run index: the last ordinal of the conversation on p (runs.go)
//	g 0 <app> 0 <ct:1><conv> 0 <p:4> <ord:8>         run index entry: a message to many as its members' entry template
//	r 0 <app> 0 <user>                               the first seq of the user's newest run (runs.go)
//
// Operational tables, outside the digest (not a function of the log):
//
//	z 0 relay 0 <p:4>                                relay position of partition p
//	z 0 cursor 0 <app> 0 <user> 0 <login>            a device's acknowledged position
const (
	tagTimeline    = 't'
	tagMeta        = 'T'
	tagHistory     = 'h'
	tagContacts    = 'C'
	tagConv        = 'v'
	tagUserGroups  = 'U'
	tagGroup       = 'G'
	tagRoom        = 'R'
	tagBody        = 'b'
	tagBodyRefs    = 'B'
	tagRunIndex    = 'g'
	tagRunOpen     = 'r'
	tagOperational = 'z'
)

func timelinePrefix(app, user string) []byte { return append(key(tagTimeline, app, user), 0) }

func timelineKey(app, user string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(timelinePrefix(app, user), seq)
}

func metaKey(app, user string) []byte { return key(tagMeta, app, user) }

func convSuffix(ct int32, conv string) string { return string([]byte{byte(ct)}) + conv }

func historyPrefix(app, user string, ct int32, conv string) []byte {
	return append(key(tagHistory, app, user, convSuffix(ct, conv)), 0)
}

func historyKey(app, user string, ct int32, conv string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(historyPrefix(app, user, ct, conv), seq)
}

func contactsKey(app, user string) []byte { return key(tagContacts, app, user) }

func convKey(app, user string, ct int32, conv string) []byte {
	return key(tagConv, app, user, convSuffix(ct, conv))
}

func convPrefix(app, user string) []byte { return append(key(tagConv, app, user), 0) }

func userGroupsKey(app, user string) []byte { return key(tagUserGroups, app, user) }

func groupKey(app, group string) []byte { return key(tagGroup, app, group) }

func roomKey(app, room string) []byte { return key(tagRoom, app, room) }

func bodyKey(tag byte, app string, id []byte, p int32) []byte {
	k := make([]byte, 0, 2+len(app)+1+len(id)+1+4)
	k = append(k, tag, 0)
	k = append(k, app...)
	k = append(k, 0)
	k = append(k, id...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, uint32(p))
}

// runCounterKey is the key of conversation (ct, conv)'s run index on
// partition p; its entries are this key followed by their ordinal.
func runCounterKey(app string, ct int32, conv string, p int32) []byte {
	return appendRunCounterKey(make([]byte, 0, 2+len(app)+1+1+len(conv)+1+4+8), app, ct, conv, p)
}

// appendRunCounterKey appends the counter key; conv as a string or as the
// bytes of a parsed value (catch-up: no conversion per entry).
func appendRunCounterKey[S ~string | ~[]byte](k []byte, app string, ct int32, conv S, p int32) []byte {
	return appendConvPartKey(k, tagRunIndex, app, ct, conv, p)
}

// appendConvPartKey appends a key of a table kept per conversation and
// partition (the run index and its counter, the set of open runs).
func appendConvPartKey[S ~string | ~[]byte](k []byte, tag byte, app string, ct int32, conv S, p int32) []byte {
	k = append(k, tag, 0)
	k = append(k, app...)
	k = append(k, 0, byte(ct))
	k = append(k, conv...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, uint32(p))
}

func runIndexKey(app string, ct int32, conv string, p int32, ord uint64) []byte {
	return binary.BigEndian.AppendUint64(runCounterKey(app, ct, conv, p), ord)
}

func runOpenKey(app, user string) []byte { return key(tagRunOpen, app, user) }

func relayKey(p int32) []byte {
	return binary.BigEndian.AppendUint32(key(tagOperational, "relay", ""), uint32(p))
}

func cursorKey(app, user, login string) []byte {
	return key(tagOperational, "cursor", app, user, login)
}
