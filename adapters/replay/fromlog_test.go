package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/mdsync/mdsync/adapters/logsource"
	"github.com/mdsync/mdsync/adapters/replay"
	"github.com/mdsync/mdsync/adapters/replay/replaytest"
	"github.com/mdsync/mdsync/engine"
)

// runLog replays src from offset from and parses the rows.
func runLog(t *testing.T, cfg replay.Config, src logsource.Source, from int64) (replaytest.Output, []replay.DecisionRow) {
	t.Helper()
	ctx := context.Background()
	lg, err := src.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	cfg.TempDir, cfg.At = t.TempDir(), -1
	var buf bytes.Buffer
	if err := replay.RunLog(ctx, cfg, lg, from, "test", &buf); err != nil {
		t.Fatalf("RunLog: %v\n%s", err, replaytest.FirstLines(buf.String(), 10))
	}
	o := replaytest.Output{Raw: buf.String()}
	var decisions []replay.DecisionRow
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r replaytest.Row
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		o.Rows = append(o.Rows, r)
		if r.Type == "decision" {
			var d replay.DecisionRow
			json.Unmarshal([]byte(l), &d)
			decisions = append(decisions, d)
		}
	}
	return o, decisions
}

// TestReplayKafkaTopic: a history in a 3-partition Kafka topic (kfake)
// replays from the topic, merged by time, to the decisions and device table
// a replay of its JSON lines gives, each row naming the record it came
// from; fan-out copies are skipped; with a --policy the what-if run differs
// where the JSON one does; from an offset, only later operations replay.
func TestReplayKafkaTopic(t *testing.T) {
	// Times from line numbers: monotonic, so the merge by time is the
	// input's order.
	input := replaytest.ReadExample(t, "same_platform_only.jsonl") + replaytest.RandomHistory(3, 150)
	input = strings.ReplaceAll(regexp.MustCompile(`,?"time_ms":-?[0-9]+`).ReplaceAllString(input, ""), "{,", "{")
	dir := t.TempDir()
	if o, err := replaytest.Run(t, replay.Config{Dir: dir, Partitions: 3, KeepGoing: true}, input); err != nil && !errors.Is(err, replay.ErrInvalidLines) {
		t.Fatalf("%v\n%s", err, replaytest.FirstLines(o.Raw, 5))
	}
	brokers, topic := replaytest.ToKafka(t, replaytest.OpenLog(t, dir))
	src := logsource.Source{Kafka: brokers, Topic: topic}

	want, err := replaytest.Run(t, replay.Config{Partitions: 1, KeepGoing: true}, input)
	if err != nil && !errors.Is(err, replay.ErrInvalidLines) {
		t.Fatal(err)
	}
	o, decisions := runLog(t, replay.Config{Partitions: 1, KeepGoing: true}, src, 0)
	var source replay.SourceRow
	if err := json.Unmarshal([]byte(replaytest.FirstLines(o.Raw, 1)), &source); err != nil || source.Type != "source" {
		t.Fatalf("no source row first:\n%s", replaytest.FirstLines(o.Raw, 3))
	}
	if source.Partitions != 3 || source.Derived == 0 || source.Unreadable != 0 || int64(source.Operations)+source.Derived != source.Records {
		t.Errorf("source row %+v", source)
	}
	outcomes := func(rows []replaytest.Row) []string {
		var out []string
		for _, r := range rows {
			out = append(out, r.Op+":"+itoa(r.Code)+":"+strings.Join(ended(r.Ended), ","))
		}
		return out
	}
	wantStrings(t, "decisions from Kafka", outcomes(o.OfType("decision")), outcomes(want.OfType("decision")))
	wantStrings(t, "devices from Kafka", o.Devices(), want.Devices())
	for i, d := range decisions {
		if d.From == nil || d.Line != i+1 || (i > 0 && d.From.Partition == decisions[i-1].From.Partition && d.From.Offset <= decisions[i-1].From.Offset) {
			t.Fatalf("decision %d: line %d from %+v", i, d.Line, d.From)
		}
	}

	// What-if: the same lines differ as in a replay of the JSON lines.
	pol, err := replay.ParsePolicy([]byte(`{"default_limit":1}`), "demo")
	if err != nil {
		t.Fatal(err)
	}
	want, err = replaytest.Run(t, replay.Config{Policy: pol, KeepGoing: true}, input)
	if err != nil && !errors.Is(err, replay.ErrInvalidLines) {
		t.Fatal(err)
	}
	got, _ := runLog(t, replay.Config{Policy: pol, KeepGoing: true}, src, 0)
	sum := func(o replaytest.Output) string {
		s := o.OfType("whatif_summary")
		if len(s) != 1 {
			t.Fatalf("no what-if summary:\n%s", replaytest.FirstLines(o.Raw, 5))
		}
		b, _ := json.Marshal(s[0])
		return string(b)
	}
	if g, w := sum(got), sum(want); g != w || len(got.OfType("whatif")) == 0 {
		t.Errorf("what-if from Kafka %s, from JSON %s", g, w)
	}

	// From an offset: only what follows.
	from := int64(20)
	_, later := runLog(t, replay.Config{Partitions: 1, KeepGoing: true}, src, from)
	if len(later) == 0 || len(later) >= len(decisions) {
		t.Fatalf("from offset %d: %d decisions of %d", from, len(later), len(decisions))
	}
	for _, d := range later {
		if d.From.Offset < from {
			t.Fatalf("from offset %d replayed %+v", from, d.From)
		}
	}
	var buf bytes.Buffer
	lg, _ := src.Open(context.Background())
	defer lg.Close()
	if err := replay.RunLog(context.Background(), replay.Config{}, lg, -1, "test", &buf); engine.CodeOf(err) != engine.CodeInvalidArgument {
		t.Errorf("negative offset: %v", err)
	}
}
