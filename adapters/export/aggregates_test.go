package export

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/opjson"
	"github.com/mdsync/mdsync/adapters/replay"
	"github.com/mdsync/mdsync/adapters/replay/replaytest"
	"github.com/mdsync/mdsync/projections/aggregates"
)

// TestAggregatesAgreeWithExport: the aggregates projection, caught up with
// a log of a random history, agrees with counts over the exported events:
// messages per chat type and hour straight from the export rows, and
// session outcomes (logins accepted and refused, sessions ended by reason,
// devices left per platform) from replaying the export.
func TestAggregatesAgreeWithExport(t *testing.T) {
	src := t.TempDir()
	replaytest.Into(t, src, replaytest.RandomHistory(4, 3000))
	lg := replaytest.OpenLog(t, src)
	exp := exportString(t, lg, Config{Partition: -1, ToOffset: -1})

	type want struct {
		logins, refused int64
		ended, active   map[string]int64
		messages        map[string]int64
		hours           map[string]int64 // chat type / hour ms
	}
	wants := map[string]*want{}
	get := func(app string) *want {
		if wants[app] == nil {
			wants[app] = &want{ended: map[string]int64{}, active: map[string]int64{}, messages: map[string]int64{}, hours: map[string]int64{}}
		}
		return wants[app]
	}
	for _, l := range strings.Split(strings.TrimSpace(exp), "\n") {
		var r opjson.Row
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		if r.Op == "message_send" {
			ct, _ := r.ChatType.(string)
			w := get(r.App)
			w.messages[ct]++
			w.hours[fmt.Sprintf("%s/%d", ct, r.TimeMs/aggregates.HourMs*aggregates.HourMs)]++
		}
	}
	o, err := replaytest.Run(t, replay.Config{Partitions: 1, KeepGoing: true}, exp)
	if err != nil {
		t.Fatal(err)
	}
	type outLine struct {
		Op    string            `json:"op"`
		App   string            `json:"app"`
		Code  int32             `json:"code"`
		Ended []replay.EndedRow `json:"ended"`
		Type  string            `json:"type"`
		// device rows
		User     string `json:"user"`
		Platform int32  `json:"platform"`
	}
	var decisions []outLine
	for _, l := range strings.Split(strings.TrimSpace(o.Raw), "\n") {
		var d outLine
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			t.Fatal(err)
		}
		decisions = append(decisions, d)
	}
	for _, d := range decisions {
		switch d.Type {
		case "decision":
			w := get(d.App)
			if d.Op == "login" {
				if d.Code == 0 {
					w.logins++
				} else {
					w.refused++
				}
			}
			for _, e := range d.Ended {
				get(e.App).ended[e.Reason]++
			}
		case "device":
			get(d.App).active[fmt.Sprint(d.Platform)]++
		}
	}

	ag, err := aggregates.Open(aggregates.Options{Dir: filepath.Join(t.TempDir(), "agg"), Partitions: lg.Partitions()})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if err := ag.CatchUp(context.Background(), lg); err != nil {
		t.Fatal(err)
	}
	apps, err := ag.Apps()
	if err != nil || len(apps) != 2 {
		t.Fatalf("apps %v %v", apps, err)
	}
	evictions := int64(0)
	for app, w := range wants {
		c, err := ag.App(app, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		hours := map[string]int64{}
		for _, h := range c.MessagesByHour {
			hours[fmt.Sprintf("%s/%d", h.ChatType, h.HourMs)] += h.Count
		}
		if c.Logins != w.logins || c.LoginsRefused != w.refused || !maps.Equal(c.Ended, w.ended) ||
			!maps.Equal(c.ActiveDevices, w.active) || !maps.Equal(c.Messages, w.messages) || !maps.Equal(hours, w.hours) {
			t.Fatalf("app %s: aggregates %+v\nwant logins %d refused %d ended %v active %v messages %v (%d hours, got %d)",
				app, c, w.logins, w.refused, w.ended, w.active, w.messages, len(w.hours), len(hours))
		}
		evictions += w.ended["REASON_LOGIN_OTHER_DEVICE"]
		if w.logins < 100 || len(w.hours) < 10 {
			t.Fatalf("app %s: a weak history: %d logins, %d hour buckets", app, w.logins, len(w.hours))
		}
	}
	if evictions == 0 {
		t.Fatal("the history evicted nobody")
	}
}
