package restapi

import (
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mdsync/mdsync/adapters/auth"
	"github.com/mdsync/mdsync/engine"
)

// FuzzRESTBodies drives the body decoders with arbitrary bytes. Property:
// no decoder panics; a refused body gets a coded error (never 1010, the code
// of "something unexpected"); an accepted body is a valid request, or, for
// an operation, one the engine's validation answers with a code.
func FuzzRESTBodies(f *testing.F) {
	seeds := []struct {
		which uint8
		body  string
	}{
		{0, `{"app":"demo","client_op_id":"o1","kind":"KIND_LOGIN","actor":{"user":"alice"},"login":{"platform":1,"login_id":"d1"}}`},
		{0, `{"app":"demo","client_op_id":"o2","kind":"KIND_KICK_DEVICE","actor":{"user":"alice"},"kick_device":{"login_id":"d1"},"event_id":"x","time_unix_ms":"5"}`},
		{0, `{"kind":99}`},
		{1, `{"user":"alice","password":"password1"}`},
		{1, `{"user":"al/ice","password":"password1"}`},
		{2, `{"new_password":"password2"}`},
		{3, ``},
		{3, `{"ttl_seconds":3600}`},
		{3, `{"ttl_seconds":-1}`},
		{4, `{"mode":"PLATFORM_MODE_SINGLE","default_limit":1,"auto_login":"AUTO_LOGIN_POLICY_KEEP_CURRENT","limits":[{"platform":2,"limit":3}]}`},
		{4, `{"mode":1,"default_limit":4,"auto_login":1,"timeline_max_entries":"100","version":"9"}`},
	}
	for _, s := range seeds {
		f.Add(s.which, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		coded := func(err error) {
			if c := engine.CodeOf(err); c == engine.CodeInternal || c == engine.CodeOK {
				t.Fatalf("decoder %d: uncoded error %v for %q", which%5, err, body)
			}
		}
		switch which % 5 {
		case 0:
			op, err := decodeOperation(body)
			if err != nil {
				coded(err)
				return
			}
			if op.EventId != "" || op.StreamKey != "" || op.TimeUnixMs != 0 || op.SchemaVersion != 0 {
				t.Fatalf("envelope kept: %v", op)
			}
			if op.Actor != nil && !op.Actor.Admin {
				t.Fatalf("actor not marked admin: %v", op)
			}
			if err := engine.Validate(op); err != nil {
				coded(err)
			}
		case 1:
			req, err := decodeRegister(body)
			if err != nil {
				coded(err)
				return
			}
			if !engine.ValidID(req.User) || !validPassword(req.Password) {
				t.Fatalf("accepted register %q → %+v", body, req)
			}
		case 2:
			pw, err := decodePassword(body)
			if err != nil {
				coded(err)
				return
			}
			if !validPassword(pw) {
				t.Fatalf("accepted password %q → %q", body, pw)
			}
		case 3:
			ttl, err := decodeTokenRequest(body)
			if err != nil {
				coded(err)
				return
			}
			if ttl < 0 || ttl > auth.MaxTokenTTL || (ttl != 0 && ttl < time.Second) {
				t.Fatalf("accepted ttl %v from %q", ttl, body)
			}
		case 4:
			ps, err := decodePolicy(body)
			if err != nil {
				coded(err)
				return
			}
			if ps.Version != 0 || ps.Partition != 0 || ps.Partitions != 0 {
				t.Fatalf("engine fields kept: %v", ps)
			}
			if err := engine.ValidatePolicy(ps); err != nil {
				t.Fatalf("accepted invalid policy %q: %v", body, err)
			}
		}
	})
}

func validPassword(pw string) bool {
	return len(pw) >= auth.MinPasswordBytes && len(pw) <= auth.MaxPasswordBytes && utf8.ValidString(pw)
}
