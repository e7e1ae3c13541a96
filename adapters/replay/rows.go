package replay

import (
	"errors"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// The output rows, one JSON line each (docs/operations.md, "Output").

// ErrorRow is an input line refused by parsing, validation or a rule.
type ErrorRow struct {
	Type    string  `json:"type"`
	Line    int     `json:"line"`
	From    *LogPos `json:"from,omitempty"` // replay of a log: where the operation is in it
	Op      string  `json:"op,omitempty"`
	Code    int32   `json:"code"`
	Message string  `json:"message"`
}

// EndedRow is a session an operation ended.
type EndedRow struct {
	App           string `json:"app"`
	User          string `json:"user"`
	LoginID       string `json:"login_id"`
	Platform      int32  `json:"platform"`
	DeviceName    string `json:"device_name"`
	Code          int32  `json:"code"`
	Reason        string `json:"reason"`
	ByLoginID     string `json:"by_login_id"`
	ByDeviceName  string `json:"by_device_name"`
	ByExtension   string `json:"by_extension"`
	PolicyVersion uint64 `json:"policy_version"`
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
}

// DecisionRow is the decision on an input line.
type DecisionRow struct {
	Type          string     `json:"type"`
	Line          int        `json:"line"`
	From          *LogPos    `json:"from,omitempty"` // replay of a log: where the operation is in it
	Op            string     `json:"op"`
	App           string     `json:"app"`
	User          string     `json:"user"`
	ClientOpID    string     `json:"client_op_id"`
	Code          int32      `json:"code"`
	Message       string     `json:"message,omitempty"`
	Partition     int32      `json:"partition"`
	Offset        int64      `json:"offset"`
	PolicyVersion uint64     `json:"policy_version"`
	LoginID       string     `json:"login_id,omitempty"`
	Reconnect     bool       `json:"reconnect,omitempty"`
	Ended         []EndedRow `json:"ended"`
}

// DeviceRow is a session of the final (or --at) device table.
type DeviceRow struct {
	Type            string `json:"type"`
	App             string `json:"app"`
	User            string `json:"user"`
	LoginID         string `json:"login_id"`
	Platform        int32  `json:"platform"`
	DeviceName      string `json:"device_name"`
	Extension       string `json:"extension"`
	LoginPartition  int32  `json:"login_partition"`
	LoginOffset     int64  `json:"login_offset"`
	LoginTimeMs     int64  `json:"login_time_ms"`
	LastLoginOffset int64  `json:"last_login_offset"`
	LastLoginTimeMs int64  `json:"last_login_time_ms"`
}

// DigestRow is the state digest of the device table's store.
type DigestRow struct {
	Type   string `json:"type"`
	Digest string `json:"digest"`
	At     *int64 `json:"at,omitempty"`
}

// VerifyRow compares the live digest with a rebuild's.
type VerifyRow struct {
	Type    string `json:"type"`
	Live    string `json:"live"`
	Rebuild string `json:"rebuild"`
	Equal   bool   `json:"equal"`
}

// WhatIfRow is a line whose outcome differs under the --policy file.
type WhatIfRow struct {
	Type        string     `json:"type"`
	Line        int        `json:"line"`
	From        *LogPos    `json:"from,omitempty"` // replay of a log: where the operation is in it
	Op          string     `json:"op"`
	App         string     `json:"app"`
	User        string     `json:"user"`
	Dropped     bool       `json:"dropped,omitempty"`
	Code        int32      `json:"code"`
	WhatIfCode  int32      `json:"whatif_code"`
	Ended       []EndedRow `json:"ended"`
	WhatIfEnded []EndedRow `json:"whatif_ended"`
}

// WhatIfSummary closes a what-if run.
type WhatIfSummary struct {
	Type            string   `json:"type"`
	Apps            []string `json:"apps"`
	Lines           int      `json:"lines"`
	Evictions       int      `json:"evictions"`
	WhatIfEvictions int      `json:"whatif_evictions"`
	Refused         int      `json:"refused"`
	WhatIfRefused   int      `json:"whatif_refused"`
}

func decisionRowOf(l opjson.Line, d *pb.Decision) DecisionRow {
	return DecisionRow{
		Type: "decision", Line: l.N, Op: l.Op, App: d.App, User: d.User, ClientOpID: d.ClientOpId,
		Code: d.Code, Message: d.Message, Partition: d.Partition, Offset: d.Offset,
		PolicyVersion: d.PolicyVersion, LoginID: d.LoginId, Reconnect: d.Reconnect,
		Ended: endedRows(d.App, d.Ended),
	}
}

func errorRowOf(l opjson.Line, err error) ErrorRow {
	msg := err.Error()
	var e *engine.Error
	if errors.As(err, &e) {
		msg = e.Message // the code has its own field
	}
	return ErrorRow{Type: "error", Line: l.N, Op: l.Op, Code: int32(engine.CodeOf(err)), Message: msg}
}

func endedRows(app string, es []*pb.Ended) []EndedRow {
	out := make([]EndedRow, 0, len(es)) // [] rather than null: "nobody ended"
	for _, e := range es {
		s := e.GetSession()
		out = append(out, EndedRow{
			App: app, User: e.User, LoginID: s.GetLoginId(), Platform: s.GetPlatform(), DeviceName: s.GetDeviceName(),
			Code: e.Code, Reason: opjson.ReasonName(e.Reason),
			ByLoginID: engine.EndedByLoginID(e), ByDeviceName: e.ByDeviceName, ByExtension: e.ByExtension,
			PolicyVersion: e.PolicyVersion, Partition: e.Partition, Offset: e.Offset,
		})
	}
	return out
}
