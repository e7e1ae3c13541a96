package forward_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/mdsync/mdsync/adapters/auth"
	"github.com/mdsync/mdsync/adapters/forward"
	"github.com/mdsync/mdsync/adapters/kafkagroup"
	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/adapters/restapi"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// acctProc is one mdsync process as serve wires it for accounts: an
// owned-mode node, its credential store following the whole log, its
// forwarding Submitter and its REST API, over a directory that survives a
// restart of the process.
type acctProc struct {
	n     *node.Node
	creds *auth.Store
	fwd   *forward.Submitter
	srv   *http.Server
	url   string
}

var tokenKey = []byte(strings.Repeat("shared-token-key", 2))

func startAcctProc(t *testing.T, brokers []string, topic, group string, parts int32, dir string) *acctProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.New(ctx, node.Options{
		Dir:   filepath.Join(dir, "node"),
		Kafka: &kafkalog.Options{Brokers: brokers, Topic: topic, Partitions: parts, CreateTopic: true},
		Group: &kafkagroup.Options{GroupID: group, Addr: addr,
			CommitInterval: 200 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := auth.Open(auth.Options{Dir: filepath.Join(dir, "accounts"), Log: n.Log, TokenKey: tokenKey,
		Argon2: auth.Argon2Params{Memory: 64, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}})
	if err != nil {
		t.Fatal(err)
	}
	fwd, err := forward.New(n.Engine, n, forward.Options{Token: token, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	api, err := restapi.New(fwd, n.Store, restapi.Options{AdminToken: token, Registry: prometheus.NewRegistry(), Auth: creds})
	if err != nil {
		t.Fatal(err)
	}
	p := &acctProc{n: n, creds: creds, fwd: fwd, srv: &http.Server{Handler: api}, url: "http://" + addr}
	go p.srv.Serve(ln)
	t.Cleanup(p.stop)
	return p
}

// stop stops the process: its server, its credential store, its node.
func (p *acctProc) stop() {
	p.srv.Close()
	p.creds.Close()
	p.n.Close()
}

// call sends a REST request and returns its status and JSON body. A 503
// (an owner not known yet or moved while the group settles) is sent again,
// with the same Idempotency-Key, as the SDKs do, for up to 10s.
func (p *acctProc) call(t *testing.T, method, path, cred, body string) (int, map[string]any) {
	t.Helper()
	key := fmt.Sprintf("k%d", callSeq.Add(1))
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, err := http.NewRequest(method, p.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Idempotency-Key", key)
		if cred != "" {
			req.Header.Set("Authorization", cred)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var m map[string]any
		json.Unmarshal(b, &m)
		if res.StatusCode == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return res.StatusCode, m
	}
}

var callSeq atomic.Int64

// submitSettled is submitOK, sent again while the answer is one a retry
// cures (1018 from an owner that moved, 1009), for up to 10s.
func submitSettled(t *testing.T, fwd *forward.Submitter, op *pb.Event) *pb.Decision {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		d, err := fwd.Submit(ctx, op)
		cancel()
		if c := engine.CodeOf(err); (c == engine.CodeNotOwner || c == engine.CodeUnavailable) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil || d.Code != 0 {
			t.Fatalf("%s %s: %v %v", engine.KindName(op.Kind), op.ClientOpId, d, err)
		}
		return d
	}
}

// caughtUp waits until p's credential store has applied every record in
// the log now: what any process acknowledged before is visible on p.
func (p *acctProc) caughtUp(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for part := int32(0); part < p.n.Log.Partitions(); part++ {
		end, err := p.n.Log.End(ctx, part)
		if err != nil {
			t.Fatal(err)
		}
		if end > 0 {
			if err := p.creds.WaitApplied(ctx, engine.Position{Partition: part, Offset: end - 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func waitOwnedAll(t *testing.T, parts int32, ps ...*acctProc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var all []int32
		ok := true
		for _, p := range ps {
			o := p.n.Owned()
			ok = ok && len(o) > 0 && p.n.Ready() == nil
			all = append(all, o...)
		}
		slices.Sort(all)
		if ok && slices.Equal(all, []int32{0, 1, 2, 3, 4, 5}[:parts]) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions not served once each after 30s: %v", all)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func basicAuth(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

// Three processes on one topic, each owning some partitions: a user
// registered through A logs in with its password on B and C; a password
// change made on B kicks its device and refuses A's old token on A and C;
// a token issued by B is refused everywhere after a password change made on
// C; a revocation made on A refuses C's token everywhere. Then every process
// restarts and the accounts are as they were.
func TestAccountsOnEveryProcess(t *testing.T) {
	const parts = 6
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	id := fmt.Sprint(time.Now().UnixNano())
	brokers, topic, group := c.ListenAddrs(), "acct-test."+id, "acct-group."+id
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	var ps [3]*acctProc
	for i := range ps {
		ps[i] = startAcctProc(t, brokers, topic, group, parts, dirs[i])
	}
	waitOwnedAll(t, parts, ps[:]...)
	a, b, cc := ps[0], ps[1], ps[2]
	all := func() { // every process has applied everything acknowledged so far
		for _, p := range ps {
			p.caughtUp(t)
		}
	}
	const devices = "/v1/apps/app/users/alice/devices"
	status := func(p *acctProc, cred string) int {
		code, _ := p.call(t, "GET", devices, cred, "")
		return code
	}
	wantEverywhere := func(what, cred string, want int) {
		t.Helper()
		for i, p := range ps {
			if got := status(p, cred); got != want {
				t.Errorf("%s on process %c: %d, want %d", what, 'A'+i, got, want)
			}
		}
	}
	issue := func(p *acctProc, pw string) string {
		t.Helper()
		code, m := p.call(t, "POST", "/v1/apps/app/users/alice/tokens", basicAuth("alice", pw), "")
		tok, _ := m["token"].(string)
		if code != 200 || tok == "" {
			t.Fatalf("issue token: %d %v", code, m)
		}
		return tok
	}

	// Registered on A: A answers once it authenticates alice itself.
	if code, m := a.call(t, "POST", "/v1/apps/app/users", "Bearer "+token, `{"user":"alice","password":"password-1"}`); code != 201 {
		t.Fatalf("register on A: %d %v", code, m)
	}
	if got := status(a, basicAuth("alice", "password-1")); got != 200 {
		t.Fatalf("A right after its own registration: %d (read-your-writes)", got)
	}
	if code, m := cc.call(t, "POST", "/v1/apps/app/users", "Bearer "+token, `{"user":"alice","password":"password-x"}`); code != 409 || m["code"] != float64(engine.CodeConflict) {
		t.Fatalf("second registration on C: %d %v, want 409/1006", code, m)
	}
	all()
	wantEverywhere("alice's password", basicAuth("alice", "password-1"), 200)
	wantEverywhere("a wrong password", basicAuth("alice", "password-x"), 401)

	// A device of alice logs in (through B, forwarded to the owner).
	submitSettled(t, b.fwd, loginOp("alice", "phone"))
	tokA := issue(a, "password-1")
	wantEverywhere("A's token", "Bearer "+tokA, 200)

	// The password changes on B: the device is kicked (216) by the same event.
	code, m := b.call(t, "PUT", "/v1/apps/app/users/alice/password", basicAuth("alice", "password-1"), `{"new_password":"password-2"}`)
	if ended, _ := m["ended"].([]any); code != 200 || len(ended) != 1 || ended[0].(map[string]any)["code"] != float64(engine.CodePasswordChanged) {
		t.Fatalf("password change on B: %d %v, want the phone ended with 216", code, m)
	}
	if got := status(b, "Bearer "+tokA); got != 401 {
		t.Fatalf("A's token on B right after B's change: %d (read-your-writes)", got)
	}
	all()
	wantEverywhere("A's token after the change on B", "Bearer "+tokA, 401)
	wantEverywhere("the old password", basicAuth("alice", "password-1"), 401)
	wantEverywhere("the new password", basicAuth("alice", "password-2"), 200)

	// A token of B, then a password change made on C.
	tokB := issue(b, "password-2")
	wantEverywhere("B's token", "Bearer "+tokB, 200)
	if code, m := cc.call(t, "PUT", "/v1/apps/app/users/alice/password", "Bearer "+token, `{"new_password":"password-3"}`); code != 200 {
		t.Fatalf("password change on C: %d %v", code, m)
	}
	all()
	wantEverywhere("B's token after the change on C", "Bearer "+tokB, 401)

	// A revocation made on A refuses C's token everywhere; the password stays.
	tokC := issue(cc, "password-3")
	if code, m := a.call(t, "POST", "/v1/apps/app/users/alice/tokens/revoke", basicAuth("alice", "password-3"), ""); code != 200 {
		t.Fatalf("revoke on A: %d %v", code, m)
	}
	all()
	wantEverywhere("C's token after the revocation on A", "Bearer "+tokC, 401)
	tokLast := issue(b, "password-3")

	// Every process restarts on its directory: accounts, epochs and the
	// follower's checkpoint come back; nothing new is appended.
	for _, p := range ps {
		p.stop()
	}
	for i := range ps {
		ps[i] = startAcctProc(t, brokers, topic, group, parts, dirs[i])
	}
	waitOwnedAll(t, parts, ps[:]...)
	all()
	wantEverywhere("the password after a restart", basicAuth("alice", "password-3"), 200)
	wantEverywhere("an older password after a restart", basicAuth("alice", "password-2"), 401)
	wantEverywhere("B's last token after a restart", "Bearer "+tokLast, 200)
	for what, tok := range map[string]string{"A's": tokA, "B's": tokB, "C's": tokC} {
		wantEverywhere(what+" revoked token after a restart", "Bearer "+tok, 401)
	}
}
