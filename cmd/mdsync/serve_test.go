package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// TestServeEndToEnd starts the real binary, on the embedded default and on
// Kafka (an in-process kfake broker), with a push webhook; plays a fifth
// login that evicts the earliest device, sends a message to a user with no
// connected device, and checks the push arrives with an idempotency key;
// then SIGTERM shuts it down cleanly.
func TestServeEndToEnd(t *testing.T) {
	bin := buildBinary(t)
	t.Run("embedded", func(t *testing.T) { serveEndToEnd(t, bin) })
	t.Run("kafka", func(t *testing.T) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		serveEndToEnd(t, bin, "--kafka-brokers", strings.Join(c.ListenAddrs(), ","), "--partitions", "4")
	})
}

func serveEndToEnd(t *testing.T, bin string, extra ...string) {
	var mu sync.Mutex
	var pushes []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		pushes = append(pushes, r.Header.Get("Idempotency-Key")+" "+string(b))
		mu.Unlock()
	}))
	defer hook.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	data := t.TempDir()
	cmd := exec.Command(bin, append([]string{"serve", "--data", data, "--addr", addr, "--push-webhook", hook.URL, "--admin-token", "tok"}, extra...)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	base := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
	post := func(body string) map[string]any {
		req, _ := http.NewRequest("POST", base+"/v1/operations", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %v", resp.StatusCode, m)
		}
		return m
	}
	var last map[string]any
	for i := 1; i <= 5; i++ {
		last = post(fmt.Sprintf(`{"app":"demo","client_op_id":"l%d","kind":"KIND_LOGIN","actor":{"user":"alice"},
			"login":{"platform":1,"login_id":"phone%d","device_name":"Phone %d","extension":"ext%d"}}`, i, i, i, i))
	}
	ended := last["ended"].([]any)[0].(map[string]any)
	if ended["code"] != float64(206) || ended["by_device_name"] != "Phone 5" || ended["by_extension"] != "ext5" ||
		ended["session"].(map[string]any)["login_id"] != "phone1" {
		t.Fatalf("fifth login: %v", last)
	}
	post(`{"app":"demo","client_op_id":"m1","kind":"KIND_MESSAGE_SEND","actor":{"user":"bob"},
		"message":{"chat_type":"CHAT_TYPE_USER","to":"alice","client_msg_id":"m1","body":"aGk="}}`)
	deadline = time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(pushes)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no push for a message to a user with no connected device")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	p := pushes[0]
	mu.Unlock()
	if !strings.HasPrefix(p, "demo/alice/") || !bytes.Contains([]byte(p), []byte(`"from":"bob"`)) {
		t.Fatalf("push %q", p)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("graceful shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no shutdown after SIGTERM")
	}
}
