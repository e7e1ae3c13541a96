package replay

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Policy is a --policy file: a policy_set operation, and whether it
// named its app (otherwise it applies to every app of the input).
type Policy struct {
	line     opjson.Line
	ownApp   bool
	app      string
	settings *pb.PolicySet
}

// ParsePolicy reads a --policy file: a policy_set line ("op" may be left
// out), checked by engine.Validate. Lines that name no app take defApp.
func ParsePolicy(b []byte, defApp string) (*Policy, error) {
	b = bytes.TrimSpace(b)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "not a JSON object: %v", err)
	}
	// The file is a policy_set line; "op" may be left out.
	if _, ok := raw["op"]; !ok {
		raw["op"] = json.RawMessage(`"policy_set"`)
	}
	b, _ = json.Marshal(raw)
	l := opjson.Decode(0, b, defApp)
	if l.Err != nil {
		return nil, l.Err
	}
	if l.Event.Kind != pb.Kind_KIND_POLICY_SET {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "op is %s, want policy_set", l.Op)
	}
	if err := engine.Validate(l.Event); err != nil {
		return nil, err
	}
	_, own := raw["app"]
	return &Policy{line: l, ownApp: own, app: l.Event.App, settings: l.Event.GetPolicySet()}, nil
}

func (w *Policy) covers(app string) bool { return !w.ownApp || app == w.app }

// whatIf replays the input again into a fresh log under cfg.Policy, set
// before the first line for every app it covers, with the input's own
// policy_set lines for those apps dropped, and prints each line whose
// outcome differs, then a summary.
func whatIf(ctx context.Context, dir string, cfg Config, lines []opjson.Line, orig []opResult, from func(int) *LogPos, emit func(any) error) error {
	r, err := openReplayer(ctx, dir, cfg.Partitions)
	if err != nil {
		return err
	}
	defer r.close()

	var apps []string
	if cfg.Policy.ownApp {
		apps = []string{cfg.Policy.app}
	} else {
		for _, l := range lines {
			if l.Err == nil && !slices.Contains(apps, l.Event.App) {
				apps = append(apps, l.Event.App)
			}
		}
		sort.Strings(apps)
	}
	for _, app := range apps {
		ev := &pb.Event{
			App: app, ClientOpId: "whatif-policy", Kind: pb.Kind_KIND_POLICY_SET,
			Actor:   &pb.Actor{User: "admin", Admin: true},
			Payload: &pb.Event_PolicySet{PolicySet: cfg.Policy.settings},
		}
		if d, err := r.submit(ev, 0); err != nil {
			return fmt.Errorf("replay: --policy for app %s: %w", app, err)
		} else if d.Code != 0 {
			return fmt.Errorf("replay: --policy for app %s refused: %d %s", app, d.Code, d.Message)
		}
	}

	sum := WhatIfSummary{Type: "whatif_summary", Apps: apps}
	for _, o := range orig {
		l := o.line
		if l.Err != nil {
			continue // refused by parsing or validation in both runs
		}
		row := WhatIfRow{Type: "whatif", Line: l.N, From: from(l.N), Op: l.Op, App: l.Event.App, User: l.Event.Actor.User}
		row.Code, row.Ended = outcome(o)
		var alt opResult
		if l.Event.Kind == pb.Kind_KIND_POLICY_SET && cfg.Policy.covers(l.Event.App) {
			row.Dropped = true
			row.WhatIfEnded = []EndedRow{}
		} else {
			alt = opResult{line: l}
			alt.d, alt.err = r.submit(l.Event, l.TimeMs)
			if fatal(r.ctx, alt.err) {
				return fmt.Errorf("replay: what-if line %d: %w", l.N, alt.err)
			}
			row.WhatIfCode, row.WhatIfEnded = outcome(alt)
		}
		sum.Evictions += evictions(row.Ended)
		sum.WhatIfEvictions += evictions(row.WhatIfEnded)
		if row.Code != 0 {
			sum.Refused++
		}
		if !row.Dropped && row.WhatIfCode != 0 {
			sum.WhatIfRefused++
		}
		if row.Dropped || row.Code != row.WhatIfCode || !sameEnded(row.Ended, row.WhatIfEnded) {
			sum.Lines++
			if err := emit(row); err != nil {
				return err
			}
		}
	}
	return emit(sum)
}

func outcome(r opResult) (int32, []EndedRow) {
	if r.err != nil {
		return int32(engine.CodeOf(r.err)), []EndedRow{}
	}
	return r.d.Code, endedRows(r.d.App, r.d.Ended)
}

// evictions counts sessions ended by something other than the device's
// own logout.
func evictions(es []EndedRow) int {
	n := 0
	for _, e := range es {
		if e.Reason != opjson.ReasonName(pb.Reason_REASON_LOGOUT) {
			n++
		}
	}
	return n
}

// sameEnded compares who was ended, how and by whom, not where: offsets and
// policy versions shift between the runs by the injected and dropped lines.
func sameEnded(a, b []EndedRow) bool {
	key := func(e EndedRow) string {
		return fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%s\x00%s", e.App, e.User, e.LoginID, e.Code, e.Reason, e.ByLoginID)
	}
	return slices.EqualFunc(a, b, func(x, y EndedRow) bool { return key(x) == key(y) })
}
