package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdsync/mdsync/client"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
)

// bench is one run's state: the population, the current phase's
// recorders, and the errors seen.
type bench struct {
	sc      Scenario
	log     *slog.Logger
	wsURL   string
	httpURL string
	token   string // admin token
	hc      *http.Client
	src     *SourceAddrs
	runID   string // makes ids unique per run, so a reused server is fine
	users   []*user
	devs    []*device
	groups  []group
	open    atomic.Int64 // connections open now
	seq     atomic.Uint64
	cur     atomic.Pointer[phaseRec]
	quiet   bool

	errMu    sync.Mutex
	errs     map[string]int
	errFirst map[string]string
}

type user struct {
	name, password string
	token          string // issued by the admin; logins use it when set
	devs           []*device
}

type group struct {
	id      string
	members []int // user indexes
}

func (b *bench) rec() *phaseRec { return b.cur.Load() }

func (b *bench) nextID(prefix string) string {
	return prefix + "-" + b.runID + "-" + strconv.FormatUint(b.seq.Add(1), 36)
}

// noteErr counts an error by a short class and keeps the first text.
func (b *bench) noteErr(class string, err error) {
	b.errMu.Lock()
	defer b.errMu.Unlock()
	b.errs[class]++
	if _, ok := b.errFirst[class]; !ok && err != nil {
		b.errFirst[class] = err.Error()
	}
}

func (b *bench) post(ctx context.Context, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.httpURL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+b.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return out, fmt.Errorf("POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(out))
	}
	return out, nil
}

// setPolicy makes the scenario's platform limit the app's policy, with a
// timeline long enough that the catch-up phase is not trimmed.
func (b *bench) setPolicy(ctx context.Context) error {
	keep := int64(max(20_000, 2*b.sc.CatchUp.Missed+10_000))
	ev := &pb.Event{App: b.sc.App, ClientOpId: b.nextID("policy"), Kind: pb.Kind_KIND_POLICY_SET,
		Actor: &pb.Actor{User: "mdsync-bench", Admin: true},
		Payload: &pb.Event_PolicySet{PolicySet: &pb.PolicySet{Mode: pb.PlatformMode_PLATFORM_MODE_MULTI,
			DefaultLimit: int32(b.sc.PlatformLimit), AutoLogin: pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
			TimelineMaxEntries: keep}}}
	body, err := protojson.Marshal(ev)
	if err != nil {
		return err
	}
	out, err := b.post(ctx, "/v1/operations", body)
	if err != nil {
		return err
	}
	var d struct {
		Code int32 `json:"code"`
	}
	if err := json.Unmarshal(out, &d); err != nil || d.Code != 0 {
		return fmt.Errorf("policy refused: %s", out)
	}
	return nil
}

// register creates the users over REST, a few at a time (each is a
// password hash on the server), and, unless the scenario logs in with
// passwords, issues each a token: a password login is an argon2 hash and
// spends from per-user and per-IP rate limits, which would make the
// benchmark measure the hash and the limiter instead of the sync engine.
func (b *bench) register(ctx context.Context, bar progress) error {
	rest := client.NewREST(b.httpURL, b.hc)
	admin := client.Credential{Admin: b.token}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, u := range b.users {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done(); bar.Add(1) }()
			err := rest.RegisterUser(ctx, b.sc.App, u.name, u.password, admin)
			if err == nil && !b.sc.PasswordLogins {
				var t client.Token
				t, err = rest.IssueToken(ctx, b.sc.App, u.name, 24*time.Hour, admin)
				u.token = t.Token
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("register %s: %w", u.name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d registrations failed; first: %w", len(errs), len(b.users), errs[0])
	}
	return nil
}
