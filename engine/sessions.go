package engine

import (
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// This file is the pure core of device sessions: who may stay logged in.
// Every function here reads only its arguments (state, policy, event and
// the event's position), so replaying the log reproduces every decision.

// ApplySession applies one session event of a user to that user's sessions
// under the partition's current policy. It never mutates st; it returns the
// new state and the decision. Refused operations return st unchanged.
func ApplySession(st *pb.UserSessions, pol *pb.Policy, ev *pb.Event, pos Position) (*pb.UserSessions, *pb.Decision) {
	d := NewDecision(ev, pos, pol)
	next := nextSessions(st)
	switch ev.Kind {
	case pb.Kind_KIND_LOGIN:
		return applyLogin(st, next, pol, ev, pos, d)
	case pb.Kind_KIND_LOGOUT:
		i := indexOf(next.Sessions, ev.Actor.LoginId)
		if i < 0 {
			return st, refuse(d, CodeNotFound, "device %s is not logged in", ev.Actor.LoginId)
		}
		d.Ended = append(d.Ended, ended(next.Sessions[i], pb.Reason_REASON_LOGOUT, CodeOK, nil, ev, pos, pol))
		next.Sessions = removeAt(next.Sessions, i)
	case pb.Kind_KIND_KICK_DEVICE:
		target := ev.GetKickDevice().GetLoginId()
		i := indexOf(next.Sessions, target)
		if i < 0 {
			return st, refuse(d, CodeNotFound, "device %s is not logged in", target)
		}
		d.Ended = append(d.Ended, ended(next.Sessions[i], pb.Reason_REASON_KICKED, CodeKickedByOtherDevice, nil, ev, pos, pol))
		next.Sessions = removeAt(next.Sessions, i)
	case pb.Kind_KIND_KICK_ALL_DEVICES:
		endAll(next, d, pb.Reason_REASON_KICKED, CodeKickedByOtherDevice, ev, pos, pol)
	case pb.Kind_KIND_PASSWORD_CHANGE:
		endAll(next, d, pb.Reason_REASON_PASSWORD_CHANGED, CodePasswordChanged, ev, pos, pol)
		next.CredentialEpoch++
	case pb.Kind_KIND_USER_REMOVE:
		endAll(next, d, pb.Reason_REASON_USER_REMOVED, CodeUserRemoved, ev, pos, pol)
	default:
		return st, refuse(d, CodeInternal, "%s is not a session operation", KindName(ev.Kind))
	}
	return next, d
}

func applyLogin(st, next *pb.UserSessions, pol *pb.Policy, ev *pb.Event, pos Position, d *pb.Decision) (*pb.UserSessions, *pb.Decision) {
	l := ev.GetLogin()
	d.LoginId = l.LoginId
	if i := indexOf(next.Sessions, l.LoginId); i >= 0 {
		s := next.Sessions[i]
		if s.Platform != l.Platform {
			return st, refuse(d, CodeConflict, "login ID %s is active on platform %d, not %d", l.LoginId, s.Platform, l.Platform)
		}
		// The same device reconnecting keeps its place in login order and
		// never evicts another device. The session is st's (nextSessions
		// shares them): change a copy.
		s = proto.Clone(s).(*pb.Session)
		next.Sessions[i] = s
		s.DeviceName, s.Extension = l.DeviceName, l.Extension
		s.LastLoginOffset, s.LastLoginTimeUnixMs = pos.Offset, ev.TimeUnixMs
		d.Reconnect = true
		return next, d
	}

	// Competitors are the sessions the new one may displace: the whole
	// account in single-platform mode, only its own platform otherwise.
	limit := LimitFor(pol, l.Platform)
	var competitors []int
	for i, s := range next.Sessions {
		if pol.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE || s.Platform == l.Platform {
			competitors = append(competitors, i)
		}
	}
	if pol.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE {
		limit = 1
	}
	if over := len(competitors) - int(limit) + 1; over > 0 {
		if l.AutoLogin && pol.AutoLogin == pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT {
			if pol.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE {
				return st, refuse(d, CodeTooManyDevices, "single-platform mode: a device is online and the policy keeps it")
			}
			return st, refuse(d, CodeTooManyDevices, "platform %d is at its limit of %d devices and the policy keeps them", l.Platform, limit)
		}
		// Sessions are kept in login order, so the first competitors are
		// the earliest logins.
		by := &pb.Session{LoginId: l.LoginId, DeviceName: l.DeviceName, Extension: l.Extension}
		evict := competitors[:over]
		for _, i := range evict {
			d.Ended = append(d.Ended, ended(next.Sessions[i], pb.Reason_REASON_LOGIN_OTHER_DEVICE, CodeLoginOtherDevice, by, ev, pos, pol))
		}
		next.Sessions = removeIndexes(next.Sessions, evict)
	}
	next.Sessions = append(next.Sessions, &pb.Session{
		LoginId:             l.LoginId,
		Platform:            l.Platform,
		DeviceName:          l.DeviceName,
		Extension:           l.Extension,
		LoginPartition:      pos.Partition,
		LoginOffset:         pos.Offset,
		LoginTimeUnixMs:     ev.TimeUnixMs,
		LastLoginOffset:     pos.Offset,
		LastLoginTimeUnixMs: ev.TimeUnixMs,
	})
	return next, d
}

// nextSessions is the state ApplySession changes instead of st: a new
// message with st's fields and a new slice of st's sessions. The sessions
// themselves are shared, not cloned (cloning them was a tenth of a login's
// apply): nothing changes a *pb.Session once it is in a state, since
// states are shared by the projector's caches and the decisions' Ended
// rows; the one change of a kept session (a reconnect) replaces it with a
// changed copy. TestNextSessionsCopiesEveryField fails when a field is
// added to UserSessions and not copied here.
func nextSessions(st *pb.UserSessions) *pb.UserSessions {
	next := &pb.UserSessions{CredentialEpoch: st.GetCredentialEpoch()}
	if ss := st.GetSessions(); len(ss) > 0 {
		next.Sessions = append(make([]*pb.Session, 0, len(ss)+1), ss...)
	}
	if st == nil {
		return next
	}
	if u := st.ProtoReflect().GetUnknown(); len(u) > 0 {
		next.ProtoReflect().SetUnknown(append(protoreflect.RawFields(nil), u...))
	}
	return next
}

// CheckActor is the rule that an ended session can do nothing (invariant 9):
// an operation acting as loginID is applied only while loginID has an active
// session in st. Otherwise it returns the refusal: the code that ended the
// session (206, 207, 216, 217; last is how it ended, nil when unknown), or
// 1005 when it never existed or was logged out. An empty loginID is an
// operation of the user's own backend (REST with the user's credentials or
// the admin's), not of a device: it is not checked here.
func CheckActor(st *pb.UserSessions, loginID string, last *pb.Ended) *Error {
	if loginID == "" || indexOf(st.GetSessions(), loginID) >= 0 {
		return nil
	}
	if last != nil && last.Code != 0 {
		return Errorf(Code(last.Code), "the session of %s ended (%s at %d/%d)", loginID, last.Reason, last.Partition, last.Offset)
	}
	if last != nil {
		return Errorf(CodeNotFound, "the session of %s ended (%s at %d/%d)", loginID, last.Reason, last.Partition, last.Offset)
	}
	return Errorf(CodeNotFound, "device %s is not logged in", loginID)
}

// ApplyPolicy returns the policy that a POLICY_SET copy installs, or the
// current one unchanged when the copy is not newer (a duplicate append).
func ApplyPolicy(cur *pb.Policy, ev *pb.Event, pos Position) (*pb.Policy, bool) {
	ps := ev.GetPolicySet()
	if ps.GetVersion() <= cur.GetVersion() {
		return cur, false
	}
	return &pb.Policy{
		Version:      ps.Version,
		Mode:         ps.Mode,
		DefaultLimit: ps.DefaultLimit,
		Limits:       ps.Limits,
		AutoLogin:    ps.AutoLogin,
		SetOffset:    pos.Offset,

		TimelineMaxEntries: ps.TimelineMaxEntries,
		TimelineMaxAgeMs:   ps.TimelineMaxAgeMs,
	}, true
}

// EnforcePolicy brings one user's sessions within a newly installed policy.
// Lowering a limit ends the EARLIEST logins above it on that platform (in
// single-platform mode, all but the latest login), with REASON_POLICY_LIMIT
// and code 217: the same "earliest goes first" rule as a login, applied at
// the policy's position in the log. It returns st unchanged and nil when no
// session is over the limit.
func EnforcePolicy(user string, st *pb.UserSessions, pol *pb.Policy, ev *pb.Event, pos Position) (*pb.UserSessions, []*pb.Ended) {
	var evict []int
	if pol.Mode == pb.PlatformMode_PLATFORM_MODE_SINGLE {
		for i := 0; i < len(st.Sessions)-1; i++ {
			evict = append(evict, i)
		}
	} else {
		// Count from the newest backwards: the newest `limit` sessions of a
		// platform stay. Indexes are collected in ascending order.
		kept := map[int32]int32{}
		keep := make([]bool, len(st.Sessions))
		for i := len(st.Sessions) - 1; i >= 0; i-- {
			p := st.Sessions[i].Platform
			if kept[p] < LimitFor(pol, p) {
				kept[p]++
				keep[i] = true
			}
		}
		for i, k := range keep {
			if !k {
				evict = append(evict, i)
			}
		}
	}
	if len(evict) == 0 {
		return st, nil
	}
	next := proto.Clone(st).(*pb.UserSessions)
	var out []*pb.Ended
	for _, i := range evict {
		e := ended(next.Sessions[i], pb.Reason_REASON_POLICY_LIMIT, CodeKickedByOtherDevice, nil, ev, pos, pol)
		e.User = user
		out = append(out, e)
	}
	next.Sessions = removeIndexes(next.Sessions, evict)
	return next, out
}

// NewDecision is the decision for an operation applied at pos: accepted
// (code 0) until a rule refuses it.
func NewDecision(ev *pb.Event, pos Position, pol *pb.Policy) *pb.Decision {
	return &pb.Decision{
		App:           ev.App,
		User:          ev.GetActor().GetUser(),
		ClientOpId:    ev.ClientOpId,
		EventId:       ev.EventId,
		Kind:          ev.Kind,
		Partition:     pos.Partition,
		Offset:        pos.Offset,
		PolicyVersion: pol.GetVersion(),
	}
}

func refuse(d *pb.Decision, code Code, format string, args ...any) *pb.Decision {
	e := Errorf(code, format, args...)
	d.Code, d.Message, d.Ended = int32(code), e.Message, nil
	return d
}

func ended(s *pb.Session, r pb.Reason, code Code, by *pb.Session, ev *pb.Event, pos Position, pol *pb.Policy) *pb.Ended {
	e := &pb.Ended{
		User:          ev.GetActor().GetUser(),
		Session:       s,
		Reason:        r,
		Code:          int32(code),
		ByActor:       ev.Actor,
		PolicyVersion: pol.GetVersion(),
		Partition:     pos.Partition,
		Offset:        pos.Offset,
		TimeUnixMs:    ev.TimeUnixMs,
	}
	if by != nil {
		e.ByLoginId, e.ByDeviceName, e.ByExtension = by.LoginId, by.DeviceName, by.Extension
	}
	return e
}

func endAll(next *pb.UserSessions, d *pb.Decision, r pb.Reason, code Code, ev *pb.Event, pos Position, pol *pb.Policy) {
	for _, s := range next.Sessions {
		d.Ended = append(d.Ended, ended(s, r, code, nil, ev, pos, pol))
	}
	next.Sessions = nil
}

func indexOf(ss []*pb.Session, loginID string) int {
	for i, s := range ss {
		if s.LoginId == loginID {
			return i
		}
	}
	return -1
}

func removeAt(ss []*pb.Session, i int) []*pb.Session {
	return append(ss[:i:i], ss[i+1:]...)
}

// removeIndexes drops the sessions at the ascending indexes idx.
func removeIndexes(ss []*pb.Session, idx []int) []*pb.Session {
	out := make([]*pb.Session, 0, len(ss)-len(idx))
	j := 0
	for i, s := range ss {
		if j < len(idx) && idx[j] == i {
			j++
			continue
		}
		out = append(out, s)
	}
	return out
}
