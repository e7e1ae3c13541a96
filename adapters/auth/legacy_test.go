package auth

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// TestMigrateLegacy moves the users of an old per-process store into the
// log once: their passwords keep working, a removed user stays unknown, a
// user the log already has keeps the log's password, and a second run
// appends nothing.
func TestMigrateLegacy(t *testing.T) {
	s, _ := open(t, t.TempDir(), nil)
	old := filepath.Join(t.TempDir(), "auth")
	db, err := pebble.Open(old, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	put := func(app, user string, r legacyRecord) {
		b, _ := json.Marshal(r)
		if err := db.Set([]byte("u\x00"+app+"\x00"+user), b, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	hashOf := func(pw string) string {
		h, err := s.HashPassword(pw)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	put("demo", "alice", legacyRecord{Hash: hashOf("alice-old-pw"), Epoch: 3})
	put("demo", "bob", legacyRecord{Epoch: 2, Removed: true})
	put("demo", "carol", legacyRecord{Hash: hashOf("carol-old-pw")})
	put("demo", "dave", legacyRecord{Hash: "not-a-phc"})
	if err := db.Set([]byte("u\x00demo\x00erin"), []byte("{not json"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := s.Register("demo", "carol", "carol-new-pw"); err != nil {
		t.Fatal(err)
	}

	var submitted int
	submit := func(ctx context.Context, op *pb.Event) (*pb.Decision, error) {
		submitted++
		d, err := s.n.Engine.Submit(ctx, op)
		if err == nil {
			err = s.WaitApplied(ctx, engine.Position{Partition: d.Partition, Offset: d.Offset})
		}
		return d, err
	}
	n, err := MigrateLegacy(context.Background(), old, submit, nil)
	if err != nil || n != 1 || submitted != 2 {
		t.Fatalf("MigrateLegacy = %d, %v after %d submissions; want 1 registered (alice) of 2 submitted (alice, carol)", n, err, submitted)
	}
	wantCode(t, s.CheckPassword("demo", "alice", "alice-old-pw", "r"), engine.CodeOK, "a migrated password")
	wantCode(t, s.CheckPassword("demo", "carol", "carol-new-pw", "r"), engine.CodeOK, "the log's password stands")
	wantCode(t, s.CheckPassword("demo", "carol", "carol-old-pw", "r"), engine.CodeUnauthenticated, "the old store's password of a user the log had")
	for _, u := range []string{"bob", "dave", "erin"} {
		if ok, _ := s.Exists("demo", u); ok {
			t.Errorf("%s was migrated", u)
		}
	}
	if _, err := os.Stat(filepath.Join(old, legacyDone)); err != nil {
		t.Fatalf("no marker: %v", err)
	}
	if n, err := MigrateLegacy(context.Background(), old, submit, nil); n != 0 || err != nil || submitted != 2 {
		t.Fatalf("second run: %d %v, %d submissions", n, err, submitted)
	}
	if n, err := MigrateLegacy(context.Background(), filepath.Join(t.TempDir(), "none"), submit, nil); n != 0 || err != nil {
		t.Fatalf("no old store: %d %v", n, err)
	}
}
