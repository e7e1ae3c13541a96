package engine

import (
	"fmt"
	"testing"

	"github.com/cockroachdb/datadriven"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/proto"
)

// TestAccountsGolden plays account events through ApplyAccount: each
// expected block is the outcome and the user's account after it.
// Regenerate with: go test ./engine -run TestAccountsGolden -rewrite
func TestAccountsGolden(t *testing.T) {
	datadriven.Walk(t, "testdata/accounts", func(t *testing.T, path string) {
		accounts := map[string]*pb.Account{}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			user, hash := "alice", ""
			for _, a := range d.CmdArgs {
				switch {
				case a.Key == "user" && len(a.Vals) == 1:
					user = a.Vals[0]
				case a.Key == "hash" && len(a.Vals) == 1:
					hash = a.Vals[0]
				}
			}
			ev := &pb.Event{App: "app", Actor: &pb.Actor{User: user}}
			switch d.Cmd {
			case "register":
				ev.Kind = pb.Kind_KIND_USER_REGISTER
			case "password":
				ev.Kind = pb.Kind_KIND_PASSWORD_CHANGE
			case "revoke":
				ev.Kind = pb.Kind_KIND_TOKENS_REVOKE
			case "remove":
				ev.Kind = pb.Kind_KIND_USER_REMOVE
			case "login":
				ev.Kind = pb.Kind_KIND_LOGIN
			default:
				t.Fatalf("unknown command %q", d.Cmd)
			}
			if hash != "" {
				ev.Payload = &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: hash}}
			}
			st := accounts[user]
			before := proto.Clone(&pb.Account{}).(*pb.Account)
			if st != nil {
				before = proto.Clone(st).(*pb.Account)
			}
			next, refused := ApplyAccount(st, ev)
			if st != nil && !proto.Equal(st, before) {
				t.Fatalf("ApplyAccount mutated its input: %v -> %v", before, st)
			}
			out := "accepted"
			if refused != nil {
				out = fmt.Sprintf("refused %d: %s", refused.Code, refused.Message)
				if next != st {
					t.Fatalf("a refusal returned a new account %v", next)
				}
			}
			accounts[user] = next
			return fmt.Sprintf("%s\n%s: epoch=%d hash=%q removed=%v\n", out, user, next.GetEpoch(), next.GetPasswordHash(), next.GetRemoved())
		})
	})
}

// TestValidateAccountOps checks what an account operation must carry.
func TestValidateAccountOps(t *testing.T) {
	cred := func(h string) *pb.Event_Credential {
		return &pb.Event_Credential{Credential: &pb.Credential{PasswordHash: h}}
	}
	phc := "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U"
	long := make([]byte, MaxPasswordHashBytes+1)
	for i := range long {
		long[i] = 'a'
	}
	for _, c := range []struct {
		name string
		ev   *pb.Event
		code Code
	}{
		{"register", &pb.Event{Kind: pb.Kind_KIND_USER_REGISTER, Payload: cred(phc)}, CodeOK},
		{"register without hash", &pb.Event{Kind: pb.Kind_KIND_USER_REGISTER}, CodeMissingField},
		{"register empty hash", &pb.Event{Kind: pb.Kind_KIND_USER_REGISTER, Payload: cred("")}, CodeMissingField},
		{"register long hash", &pb.Event{Kind: pb.Kind_KIND_USER_REGISTER, Payload: cred(string(long))}, CodeTooLarge},
		{"register hash with a space", &pb.Event{Kind: pb.Kind_KIND_USER_REGISTER, Payload: cred("a b")}, CodeInvalidArgument},
		{"password change", &pb.Event{Kind: pb.Kind_KIND_PASSWORD_CHANGE, Payload: cred(phc)}, CodeOK},
		{"password change without hash", &pb.Event{Kind: pb.Kind_KIND_PASSWORD_CHANGE}, CodeMissingField},
		{"revoke", &pb.Event{Kind: pb.Kind_KIND_TOKENS_REVOKE}, CodeOK},
		{"revoke with a hash", &pb.Event{Kind: pb.Kind_KIND_TOKENS_REVOKE, Payload: cred(phc)}, CodeInvalidArgument},
		{"remove", &pb.Event{Kind: pb.Kind_KIND_USER_REMOVE}, CodeOK},
		{"remove by a device", &pb.Event{Kind: pb.Kind_KIND_USER_REMOVE, Actor: &pb.Actor{User: "alice", LoginId: "d1"}}, CodeInvalidArgument},
		{"password change by a device", &pb.Event{Kind: pb.Kind_KIND_PASSWORD_CHANGE, Payload: cred(phc), Actor: &pb.Actor{User: "alice", LoginId: "d1"}}, CodeInvalidArgument},
	} {
		ev := c.ev
		ev.App, ev.ClientOpId = "app", "op1"
		if ev.Actor == nil {
			ev.Actor = &pb.Actor{User: "alice", Admin: true}
		}
		if got := CodeOf(Validate(ev)); got != c.code {
			t.Errorf("%s: code %d, want %d (%v)", c.name, got, c.code, Validate(ev))
		}
	}
}
