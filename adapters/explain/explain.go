// Package explain is `mdsync explain`: every login, eviction and kick of a
// user's devices, with who caused it, why, the policy version and the log
// position, read from the projections (the audit and device tables) and
// the log (each login's decision).
package explain

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/mdsync/mdsync/adapters/logsource"
	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Config is one explain run (the flags of `mdsync explain`).
type Config struct {
	App, User, Device string
	JSON              bool
	// Rebuild builds the projections from the log into a temporary
	// directory instead of reading the data directory's.
	Rebuild bool
	TempDir string
}

// Row is one row of explain's output (docs/operations.md).
type Row struct {
	Event         string `json:"event"` // "login" or "ended"
	App           string `json:"app"`
	User          string `json:"user"`
	LoginID       string `json:"login_id"`
	Platform      int32  `json:"platform"`
	DeviceName    string `json:"device_name"`
	Extension     string `json:"extension,omitempty"`
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
	TimeMs        int64  `json:"time_ms"`
	PolicyVersion uint64 `json:"policy_version"`
	// login rows
	Reconnect bool `json:"reconnect,omitempty"`
	Active    bool `json:"active,omitempty"`
	// ended rows
	Code         int32  `json:"code,omitempty"`
	Reason       string `json:"reason,omitempty"`
	ByLoginID    string `json:"by_login_id,omitempty"`
	ByDeviceName string `json:"by_device_name,omitempty"`
	ByExtension  string `json:"by_extension,omitempty"`
	ByUser       string `json:"by_user,omitempty"`
	ByAdmin      bool   `json:"by_admin,omitempty"`
	LoginOffset  *int64 `json:"login_offset,omitempty"`
}

// Run explains cfg.User's sessions from src: the data directory's
// projections (DATA/proj, or DATA/proj-kafka for a Kafka log) and the log,
// or with cfg.Rebuild the log alone. A running server is not disturbed:
// what it holds is read from snapshots (logsource), the projections' taken
// before the log's, so every login the projections name is in the log read;
// the projections' snapshot, private, is then caught up to the log's (the
// server's last unsynced projection writes may not be in its files yet).
func Run(ctx context.Context, src logsource.Source, cfg Config, out, warn io.Writer) error {
	if !engine.ValidID(cfg.App) || !engine.ValidID(cfg.User) || (cfg.Device != "" && !engine.ValidID(cfg.Device)) {
		return engine.Errorf(engine.CodeInvalidArgument, "explain: --app, --user and --device must be ids (--user is required)")
	}
	if src.TempDir == "" {
		src.TempDir = cfg.TempDir
	}
	projDir := filepath.Join(src.Data, "proj")
	if src.Kafka != "" {
		projDir = filepath.Join(src.Data, "proj-kafka")
	}
	snapshot := !cfg.Rebuild && logsource.PebbleExists(projDir) && logsource.Held(projDir)
	if snapshot {
		snap, cleanup, err := logsource.SnapshotDir(projDir, cfg.TempDir)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		defer cleanup()
		projDir = snap
	}
	lg, err := src.Open(ctx)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	defer lg.Close()
	return explain(ctx, lg, projDir, snapshot, cfg, out, warn)
}

// explain reads the store in projDir, caught up to lg first when it is a
// private snapshot.
func explain(ctx context.Context, lg engine.Log, projDir string, catchUp bool, cfg Config, out, warn io.Writer) error {
	var st *projections.Store
	var err error
	if cfg.Rebuild {
		dir, err := os.MkdirTemp(cfg.TempDir, "mdsync-explain-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if st, err = projections.Rebuild(ctx, lg, projections.Options{Dir: dir}); err != nil {
			return fmt.Errorf("explain: rebuild: %w", err)
		}
	} else {
		if !logsource.PebbleExists(projDir) {
			return engine.Errorf(engine.CodeNotFound, "explain: no projections in %s (use --rebuild)", projDir)
		}
		// Read as is: catching up here would apply events without the
		// server's hooks (push). A store behind the log is reported.
		if st, err = projections.Open(projections.Options{Dir: projDir, Partitions: lg.Partitions()}); err != nil {
			return fmt.Errorf("explain: %w (or use --rebuild)", err)
		}
		if catchUp {
			if err := st.CatchUp(ctx, lg); err != nil {
				st.Close()
				return fmt.Errorf("explain: catch up the projections' snapshot: %w", err)
			}
		}
		p := engine.PartitionFor([]byte(engine.UserStream(cfg.App, cfg.User)), lg.Partitions())
		if end, err := lg.End(ctx, p); err == nil && st.Checkpoint(p).NextOffset < end {
			fmt.Fprintf(warn, "mdsync explain: the projections are at offset %d of partition %d, the log at %d; --rebuild reads all of it\n",
				st.Checkpoint(p).NextOffset, p, end)
		}
	}
	defer st.Close()
	rows, err := rowsOf(ctx, lg, st, cfg)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	for _, r := range rows {
		if cfg.JSON {
			if err := enc.Encode(r); err != nil {
				return err
			}
			continue
		}
		if _, err := fmt.Fprintln(out, Text(r)); err != nil {
			return err
		}
	}
	if !cfg.JSON && len(rows) == 0 {
		fmt.Fprintf(out, "no logins or ended sessions of %s/%s\n", cfg.App, cfg.User)
	}
	return nil
}

// rowsOf gathers the user's sessions: ended ones from the audit
// table, live ones from the device table; each login's decision (its
// policy version) is found through the login's record in the log.
func rowsOf(ctx context.Context, lg engine.Log, st *projections.Store, cfg Config) ([]Row, error) {
	audit, err := st.Audit(cfg.App, cfg.User)
	if err != nil {
		return nil, err
	}
	live, err := st.Devices(cfg.App, cfg.User)
	if err != nil {
		return nil, err
	}
	var rows []Row
	type loginAt struct {
		p   int32
		off int64
	}
	seen := map[loginAt]bool{}
	addLogin := func(s *pb.Session, active bool) error {
		for _, at := range []struct {
			off       int64
			ms        int64
			reconnect bool
		}{{s.LoginOffset, s.LoginTimeUnixMs, false}, {s.LastLoginOffset, s.LastLoginTimeUnixMs, true}} {
			k := loginAt{s.LoginPartition, at.off}
			if seen[k] || (at.reconnect && at.off == s.LoginOffset) {
				continue
			}
			seen[k] = true
			pv, err := policyVersionAt(ctx, lg, st, s.LoginPartition, at.off)
			if err != nil {
				return err
			}
			rows = append(rows, Row{
				Event: "login", App: cfg.App, User: cfg.User, LoginID: s.LoginId, Platform: s.Platform,
				DeviceName: s.DeviceName, Extension: s.Extension, Partition: s.LoginPartition, Offset: at.off,
				TimeMs: at.ms, PolicyVersion: pv, Reconnect: at.reconnect, Active: active,
			})
		}
		return nil
	}
	for _, e := range audit {
		s := e.GetSession()
		if err := addLogin(s, false); err != nil {
			return nil, err
		}
		lo := s.GetLoginOffset()
		rows = append(rows, Row{
			Event: "ended", App: cfg.App, User: cfg.User, LoginID: s.GetLoginId(), Platform: s.GetPlatform(),
			DeviceName: s.GetDeviceName(), Extension: s.GetExtension(), Partition: e.Partition, Offset: e.Offset,
			TimeMs: e.TimeUnixMs, PolicyVersion: e.PolicyVersion, Code: e.Code, Reason: opjson.ReasonName(e.Reason),
			ByLoginID: engine.EndedByLoginID(e), ByDeviceName: e.ByDeviceName, ByExtension: e.ByExtension,
			ByUser: e.GetByActor().GetUser(), ByAdmin: e.GetByActor().GetAdmin(), LoginOffset: &lo,
		})
	}
	for _, s := range live {
		if err := addLogin(s, true); err != nil {
			return nil, err
		}
	}
	if cfg.Device != "" {
		kept := rows[:0]
		for _, r := range rows {
			if r.LoginID == cfg.Device || r.ByLoginID == cfg.Device {
				kept = append(kept, r)
			}
		}
		rows = kept
	}
	// Log order; at one position the login comes before what it ended.
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		if a.Offset != b.Offset {
			return a.Offset < b.Offset
		}
		return a.Event == "login" && b.Event != "login"
	})
	return rows, nil
}

// policyVersionAt is the policy version the operation at (p, off) was
// decided under, from its decision.
func policyVersionAt(ctx context.Context, lg engine.Log, st *projections.Store, p int32, off int64) (uint64, error) {
	ents, err := lg.Read(ctx, p, off, 1)
	if err != nil {
		return 0, fmt.Errorf("explain: read login at %d/%d: %w", p, off, err)
	}
	ev, err := engine.Decode(ents[0].Value)
	if err != nil {
		return 0, err
	}
	d, ok, err := st.Decision(ev.App, ev.StreamKey, ev.GetActor().GetUser(), ev.ClientOpId)
	if err != nil || !ok {
		return 0, fmt.Errorf("explain: no decision for the login at %d/%d (%v)", p, off, err)
	}
	return d.PolicyVersion, nil
}

func Text(r Row) string {
	at := fmt.Sprintf("%d/%d %s", r.Partition, r.Offset, time.UnixMilli(r.TimeMs).UTC().Format(time.RFC3339))
	dev := fmt.Sprintf("%s (platform %d, %q", r.LoginID, r.Platform, r.DeviceName)
	if r.Extension != "" {
		dev += fmt.Sprintf(", extension %q", r.Extension)
	}
	dev += ")"
	if r.Event == "login" {
		what := "login    "
		if r.Reconnect {
			what = "reconnect"
		}
		state := "ended later"
		if r.Active {
			state = "still logged in"
		}
		return fmt.Sprintf("%s  %s %s, policy v%d; %s", at, what, dev, r.PolicyVersion, state)
	}
	cause := ""
	switch {
	case r.ByLoginID != "" && r.Reason == opjson.ReasonName(pb.Reason_REASON_LOGIN_OTHER_DEVICE):
		cause = fmt.Sprintf(" by the login of %s (%q, extension %q)", r.ByLoginID, r.ByDeviceName, r.ByExtension)
	case r.ByLoginID != "":
		cause = fmt.Sprintf(" by device %s", r.ByLoginID)
	case r.ByAdmin:
		cause = " by the admin"
	case r.ByUser != "":
		cause = " by " + r.ByUser
	}
	return fmt.Sprintf("%s  ended     %s: %d %s%s, policy v%d", at, dev, r.Code, r.Reason, cause, r.PolicyVersion)
}
