package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServeMaxPendingAgeFlag runs the built binary with --max-pending-age
// 1ns: an op that arrives while another awaits its decision is refused
// before the append, 429 with code 1019, retry_after_ms and Retry-After;
// sent again after retry_after_ms, every op is accepted in the end.
func TestServeMaxPendingAgeFlag(t *testing.T) {
	bin := buildBinary(t)
	srv := startServeLogged(t, bin, "--debug-addr", "", "--max-pending", "-1", "--max-pending-age", "1ns")
	base := "http://" + srv.addr

	type answer struct {
		Code         int32 `json:"code"`
		RetryAfterMs int64 `json:"retry_after_ms"`
	}
	var mu sync.Mutex
	busy := 0
	var errs []string
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 3 {
				id := fmt.Sprintf("m%d-%d", w, i)
				body := fmt.Sprintf(`{"app":"demo","client_op_id":%q,"kind":"KIND_MESSAGE_SEND","actor":{"user":"u%d"},
					"message":{"chat_type":"CHAT_TYPE_USER","to":"bob","client_msg_id":%q,"body":"aGk="}}`, id, w, id)
				for deadline := time.Now().Add(30 * time.Second); ; {
					req, _ := http.NewRequest("POST", base+"/v1/operations", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer tok")
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						mu.Lock()
						errs = append(errs, err.Error())
						mu.Unlock()
						return
					}
					var a answer
					json.NewDecoder(resp.Body).Decode(&a)
					resp.Body.Close()
					if resp.StatusCode == 200 && a.Code == 0 {
						break
					}
					if resp.StatusCode != 429 || a.Code != 1019 || a.RetryAfterMs <= 0 || resp.Header.Get("Retry-After") == "" || time.Now().After(deadline) {
						mu.Lock()
						errs = append(errs, fmt.Sprintf("%s: %d %+v", id, resp.StatusCode, a))
						mu.Unlock()
						return
					}
					mu.Lock()
					busy++
					mu.Unlock()
					time.Sleep(time.Duration(a.RetryAfterMs) * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d ops not accepted; first: %s", len(errs), errs[0])
	}
	if busy == 0 {
		t.Fatal("no op refused with 1019 at --max-pending-age 1ns: the flag is not the engine's bound")
	}
	t.Logf("96 ops accepted after %d refusals", busy)
}
