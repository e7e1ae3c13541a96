package projections

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections/storetest"
)

func memDB(t *testing.T) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: vfs.NewMem(), Logger: PebbleLogger(nil)})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// The topology is checked when the runner is built: one decider per kind,
// Decide or Observe, no handler declaring the runner's own tables.
func TestRunnerRefusesBadTopology(t *testing.T) {
	decide := func(*Txn, *pb.Event, engine.Position, *pb.Policy) (*pb.Decision, error) { return nil, nil }
	observe := func(*Txn, *Outcome) error { return nil }
	for name, hs := range map[string][]Handler{
		"two deciders": {Sessions(1), {Name: "again", Kinds: []pb.Kind{pb.Kind_KIND_LOGOUT}, Decide: decide}},
		"both":         {{Name: "both", Kinds: []pb.Kind{pb.Kind_KIND_LOGOUT}, Decide: decide, Observe: observe}},
		"neither":      {{Name: "neither", Kinds: []pb.Kind{pb.Kind_KIND_LOGOUT}}},
		"runner table": {{Name: "thief", Tables: []byte{tagDecision}, Observe: observe}},
	} {
		db := memDB(t)
		if _, err := NewRunner(db, RunnerOptions{Partitions: 1, Handlers: hs}); err == nil {
			t.Errorf("%s: NewRunner accepted the topology", name)
		}
		db.Close()
	}
}

// A handler writes only the tables it declares: a write outside them fails
// the batch, and nothing of it is committed.
func TestRunnerRefusesWriteOutsideTables(t *testing.T) {
	stray := Handler{Name: "stray", Tables: []byte{'n'}, Categories: []engine.Category{engine.CatSession},
		Observe: func(t *Txn, o *Outcome) error { return t.Put(sessionsKey(o.Event.App, "someone"), &pb.UserSessions{}) }}
	r, err := NewRunner(memDB(t), RunnerOptions{Partitions: 1, Handlers: []Handler{Sessions(1), stray}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	hist := storetest.History(1, 200, 5)
	err = r.Apply(0, hist[0])
	if err == nil || !strings.Contains(err.Error(), "outside its tables") {
		t.Fatalf("Apply: %v, want a write outside the handler's tables refused", err)
	}
	if cp := r.Checkpoint(0); cp.NextOffset != 0 {
		t.Fatalf("checkpoint %v after a failed batch", cp)
	}
}

// An observer in the main store's runner sees every decision of its kinds
// once, duplicates never, with the session changes of the decision; the
// main state (the digest) is the same with or without it.
func TestObserverInStoreBatch(t *testing.T) {
	hist := storetest.History(2, 3000, 9)
	var logins, changes int
	obs := Handler{Name: "obs", Kinds: []pb.Kind{pb.Kind_KIND_LOGIN}, Observe: func(t *Txn, o *Outcome) error {
		logins++
		changes += len(o.Sessions)
		return nil
	}}
	digest := func(hs []Handler) string {
		s, err := Open(Options{FS: vfs.NewMem(), Partitions: 2, Handlers: hs})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for p, es := range hist {
			if err := s.Apply(int32(p), es); err != nil {
				t.Fatal(err)
			}
		}
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if a, b := digest(nil), digest([]Handler{obs}); a != b {
		t.Fatalf("digest %s with an observer that writes nothing, %s without", b, a)
	}
	if logins == 0 || changes < logins {
		t.Fatalf("observed %d logins with %d session changes", logins, changes)
	}
}

// A partition's Txn is reused from batch to batch (Txn.reset): after a
// reset nothing of the last batch is left in it. A field added to Txn must
// be reset there or named here as kept.
func TestTxnResetForgetsTheBatch(t *testing.T) {
	s, err := Open(Options{FS: vfs.NewMem(), Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hist := storetest.History(1, 3000, 4)
	if err := s.Apply(0, hist[0][:readBatch]); err != nil {
		t.Fatal(err)
	}
	tx := s.parts[0].txn
	if tx == nil || len(tx.overlay) == 0 || len(tx.state) == 0 {
		t.Fatal("the applied batch left no Txn, or an empty one: nothing to check")
	}
	kept := map[string]bool{"db": true, "b": true, "own": true, "hot": true, "filter": true, "stateGen": true,
		"kbuf": true} // kbuf: a scratch buffer of bytes, no pointers
	b := s.db.NewBatch()
	defer b.Close()
	tx.reset(b, &s.runnerOwn)
	v := reflect.ValueOf(tx).Elem()
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch {
		case kept[name]:
		case f.Kind() == reflect.Map || f.Kind() == reflect.Slice:
			if f.Len() != 0 {
				t.Errorf("Txn.%s has %d elements after reset", name, f.Len())
			}
			if f.Kind() == reflect.Slice {
				full := f.Slice(0, f.Cap())
				for j := range full.Len() {
					if !full.Index(j).IsZero() {
						t.Errorf("Txn.%s keeps element %d of the last batch alive", name, j)
						break
					}
				}
			}
		case !f.IsZero():
			t.Errorf("Txn.%s is %v after reset, not zero: reset it or name it as kept", name, f)
		}
	}
}

// A batch that fails half-way leaves the reused Txn full of its writes;
// the next batch must not see them: applying the same entries again gives
// the store that never failed.
func TestFailedBatchLeavesNothingForTheNext(t *testing.T) {
	hist := storetest.History(1, 3000, 6)
	failAt := -1
	var seen int
	flaky := Handler{Name: "flaky", Categories: []engine.Category{engine.CatSession, engine.CatMessage}, Observe: func(*Txn, *Outcome) error {
		seen++
		if seen == failAt {
			return errors.New("injected")
		}
		return nil
	}}
	digest := func(fail bool) string {
		s, err := Open(Options{FS: vfs.NewMem(), Partitions: 1, Handlers: []Handler{flaky}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		seen, failAt = 0, -1
		for i := 0; i < len(hist[0]); i += readBatch {
			batch := hist[0][i:min(i+readBatch, len(hist[0]))]
			if fail && i == 2*readBatch {
				failAt = seen + readBatch/3
				if err := s.Apply(0, batch); err == nil {
					t.Fatal("the injected failure did not fail the batch")
				}
				failAt = -1
			}
			if err := s.Apply(0, batch); err != nil {
				t.Fatal(err)
			}
		}
		d, err := s.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if a, b := digest(false), digest(true); a != b {
		t.Fatalf("digest %s after a failed batch was applied again, %s without the failure", b, a)
	}
}

// BenchmarkApplyLogin: Runner.Apply of session operations in batches of
// readBatch, the shape of benchmarks' ProjectionApply (logins on rotating
// platforms, so the limit ends sessions, and a kick of the previous device
// every fourth operation of a user) over 4,096 users, on disk (an
// in-memory FS spends its time growing the WAL's buffer). Reported per
// event.
func BenchmarkApplyLogin(b *testing.B) {
	const users = 4096
	s, err := Open(Options{Dir: b.TempDir(), Partitions: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var off int64
	batch := func(first int) []engine.Entry {
		out := make([]engine.Entry, readBatch)
		for i := range out {
			n := first + i
			u, seq := n%users, n/users
			user := fmt.Sprintf("user-%07d", u)
			dev := func(s int) string { return fmt.Sprintf("dev-%s-%06d", user, s) }
			ev := &pb.Event{App: "app", ClientOpId: fmt.Sprintf("op-%06d", seq), Kind: pb.Kind_KIND_LOGIN,
				Actor: &pb.Actor{User: user, LoginId: dev(seq)},
				Payload: &pb.Event_Login{Login: &pb.Login{Platform: int32(1 + seq%2), LoginId: dev(seq),
					DeviceName: "Pixel 8 Pro / Android 15", Extension: `{"appVersion":"4.9.1"}`}}}
			if seq%4 == 3 {
				ev.Kind, ev.Actor.LoginId = pb.Kind_KIND_KICK_DEVICE, dev(seq-1)
				ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: dev(seq - 2)}}
			}
			ev.SchemaVersion, ev.StreamKey = engine.SchemaVersion, engine.UserStream("app", user)
			ev.EventId, ev.TimeUnixMs = engine.EventID(ev.StreamKey, user, ev.ClientOpId), 1_700_000_000_000+int64(n)
			v, err := engine.Encode(ev)
			if err != nil {
				b.Fatal(err)
			}
			out[i] = engine.Entry{Partition: 0, Offset: off, Key: []byte(ev.StreamKey), Value: v}
			off++
		}
		return out
	}
	// Every user has sessions before the timing starts.
	for first := 0; first < 2*users; first += readBatch {
		if err := s.Apply(0, batch(first)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	var events int
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		es := batch(2*users + i*readBatch)
		b.StartTimer()
		if err := s.Apply(0, es); err != nil {
			b.Fatal(err)
		}
		events += len(es)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}
