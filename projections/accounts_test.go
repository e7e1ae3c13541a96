package projections

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// TestAccountsFollowTheMainProjection applies one partition's log to the
// main projection and to an Accounts runner: both reach the same account
// for every user, the Accounts runner writes nothing for other kinds, and
// its state survives a reopen.
func TestAccountsFollowTheMainProjection(t *testing.T) {
	cred := func(h string) *pb.Event_Credential {
		return &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: h}}
	}
	admin := func(user string) *pb.Actor { return &pb.Actor{User: user, Admin: true} }
	evs := []*pb.Event{
		{Kind: pb.Kind_KIND_USER_REGISTER, Actor: admin("alice"), Payload: cred("h1")},
		{Kind: pb.Kind_KIND_LOGIN, Actor: &pb.Actor{User: "alice"}, Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "d1"}}},
		{Kind: pb.Kind_KIND_USER_REGISTER, Actor: admin("alice"), Payload: cred("h2")}, // refused: exists
		{Kind: pb.Kind_KIND_PASSWORD_CHANGE, Actor: admin("alice"), Payload: cred("h3")},
		{Kind: pb.Kind_KIND_PASSWORD_CHANGE, Actor: admin("bob"), Payload: cred("h4")}, // refused: unknown
		{Kind: pb.Kind_KIND_USER_REGISTER, Actor: admin("bob"), Payload: cred("h5")},
		{Kind: pb.Kind_KIND_TOKENS_REVOKE, Actor: admin("bob")},
		{Kind: pb.Kind_KIND_USER_REMOVE, Actor: admin("bob")},
		{Kind: pb.Kind_KIND_MESSAGE_SEND, Actor: &pb.Actor{User: "alice"}, Payload: &pb.Event_Message{Message: &pb.MessageSend{ChatType: pb.ChatType_CHAT_TYPE_USER, To: "bob", ClientMsgId: "m1"}}},
	}
	var entries []engine.Entry
	for i, ev := range evs {
		ev.App, ev.SchemaVersion, ev.ClientOpId, ev.TimeUnixMs = "app", 1, fmt.Sprintf("op%d", i), int64(i)
		ev.StreamKey = engine.StreamKeyFor(ev)
		ev.EventId = engine.EventID(ev.StreamKey, ev.Actor.User, ev.ClientOpId)
		b, err := engine.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, engine.Entry{Partition: 0, Offset: int64(i), Key: []byte(ev.StreamKey), Value: b})
	}
	// The first registration's retried append: a duplicate for both.
	entries = append(entries, engine.Entry{Partition: 0, Offset: int64(len(entries)), Key: entries[0].Key, Value: entries[0].Value})

	main := openMem(t, 1, nil)
	defer main.Close()
	if err := main.Apply(0, entries); err != nil {
		t.Fatal(err)
	}
	fs := vfs.NewMem()
	acc, err := OpenAccounts(AccountsOptions{FS: fs, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := acc.Apply(0, entries); err != nil {
		t.Fatal(err)
	}
	want := map[string]*pb.Account{
		"alice": {PasswordHash: "h3", Epoch: 2},
		"bob":   {Epoch: 3, Removed: true},
	}
	for user, w := range want {
		got, ok, err := acc.Account("app", user)
		if err != nil || !ok || !proto.Equal(got, w) {
			t.Errorf("accounts: %s = %v (ok %v, %v), want %v", user, got, ok, err, w)
		}
		// The main projection keeps the same account without its hash.
		inMain, noHash := &pb.Account{}, proto.Clone(w).(*pb.Account)
		noHash.PasswordHash = ""
		if _, err := getProto(main.db, accountKey("app", user), inMain); err != nil || !proto.Equal(inMain, noHash) {
			t.Errorf("main projection: %s = %v (%v), want %v", user, inMain, err, noHash)
		}
	}
	if _, ok, _ := acc.Account("app", "carol"); ok {
		t.Error("an account nobody registered exists")
	}
	// Skipped kinds leave nothing behind; account kinds leave their dedup mark.
	for op, want := range map[string]bool{"op0": true, "op1": false, "op8": false} {
		_, closer, err := acc.db.Get(decisionKey(entriesStream(t, entries, op), "alice", op))
		if got := err == nil; got != want {
			t.Errorf("accounts: a dedup record of %s: %v, want %v", op, got, want)
		}
		if closer != nil {
			closer.Close()
		}
	}
	cp := acc.Checkpoint(0)
	if cp.NextOffset != int64(len(entries)) || cp.Applied != 7 || cp.Duplicates != 1 || cp.Skipped != 2 {
		t.Errorf("checkpoint %v: want next %d, 7 applied (account kinds), 1 duplicate, 2 skipped (login, message)", cp, len(entries))
	}
	// The password change ended alice's device in the main projection.
	if d, ok, _ := main.Decision("app", engine.UserStream("app", "alice"), "alice", "op3"); !ok || len(d.Ended) != 1 || d.Ended[0].Code != 216 {
		t.Errorf("password change decision %v: want d1 ended with 216", d)
	}
	if d, ok, _ := main.Decision("app", engine.UserStream("app", "bob"), "bob", "op4"); !ok || d.Code != 1005 {
		t.Errorf("password change of an unknown user: %v, want 1005", d)
	}
	if err := acc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := acc.Account("app", "alice"); err != ErrClosed {
		t.Errorf("read after Close: %v, want ErrClosed", err)
	}
	again, err := OpenAccounts(AccountsOptions{FS: fs, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got, _, _ := again.Account("app", "alice"); !proto.Equal(got, want["alice"]) || again.Checkpoint(0).NextOffset != int64(len(entries)) {
		t.Errorf("after reopen: %v at %v", got, again.Checkpoint(0))
	}
	if _, err := OpenAccounts(AccountsOptions{FS: fs, Partitions: 2}); err == nil {
		t.Error("reopened with another partition count")
	}
}

// entriesStream is the stream key of the entry whose client op id is op.
func entriesStream(t *testing.T, entries []engine.Entry, op string) string {
	t.Helper()
	for _, en := range entries {
		ev, err := engine.Decode(en.Value)
		if err == nil && ev.ClientOpId == op {
			return ev.StreamKey
		}
	}
	t.Fatalf("no entry %s", op)
	return ""
}

// flakyLog fails its first reads, as a Kafka log does while its broker
// restarts, then serves entries of partition 0.
type flakyLog struct {
	engine.Log
	fails   atomic.Int32
	entries []engine.Entry
}

func (l *flakyLog) Partitions() int32 { return 1 }

func (l *flakyLog) Read(ctx context.Context, p int32, from int64, max int) ([]engine.Entry, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, errors.New("broker unavailable")
	}
	if from < int64(len(l.entries)) {
		return l.entries[from:min(int(from)+max, len(l.entries))], nil
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// The accounts runner, which nobody restarts, reads through failed reads.
func TestAccountsRunReadsThroughFailures(t *testing.T) {
	ev := &pb.Event{App: "app", SchemaVersion: 1, ClientOpId: "r1", Kind: pb.Kind_KIND_USER_REGISTER, Actor: &pb.Actor{User: "alice", Admin: true},
		Payload: &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: "h1"}}}
	ev.StreamKey = engine.StreamKeyFor(ev)
	b, err := engine.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	lg := &flakyLog{entries: []engine.Entry{{Partition: 0, Offset: 0, Key: []byte(ev.StreamKey), Value: b}}}
	lg.fails.Store(2)
	acc, err := OpenAccounts(AccountsOptions{FS: vfs.NewMem(), Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- acc.Run(ctx, lg) }()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := acc.WaitApplied(wctx, engine.Position{Partition: 0, Offset: 0}); err != nil {
		t.Fatalf("after two failed reads: %v", err)
	}
	if a, ok, _ := acc.Account("app", "alice"); !ok || a.PasswordHash != "h1" {
		t.Fatalf("account %v %v", a, ok)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
}
