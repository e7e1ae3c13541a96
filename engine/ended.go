package engine

import pb "github.com/mdsync/mdsync/engine/enginepb"

// EndedByLoginID is the login ID of the device that ended e's session, as
// the kicked frame's by_login_id and every report (explain, replay rows,
// the admin feed) name it: the newer login that evicted it (206, stored in
// the record as ByLoginId), or the device of the user whose kick ended it
// (217: the kick's actor); "" when no device did (the admin, the user's
// backend or credential). Derived at read time from what the decision
// already stores, so no stored byte changes and every path agrees.
func EndedByLoginID(e *pb.Ended) string {
	if id := e.GetByLoginId(); id != "" {
		return id
	}
	if e.GetReason() == pb.Reason_REASON_KICKED {
		return e.GetByActor().GetLoginId()
	}
	return ""
}
