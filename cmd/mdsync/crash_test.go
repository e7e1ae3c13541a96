package main

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	"github.com/mdsync/mdsync/projections"
)

// TestCrashSIGKILL runs the real binary appending and projecting under load
// (mdsync stress, 8 concurrent submitters), SIGKILLs it at random points,
// restarts it on the same data directory, and finally checks that every
// acknowledged operation is in the log at the position it was acknowledged
// with, was applied exactly once, and that the recovered projection's digest
// equals a rebuild from offset 0.
//
// MDSYNC_CRASH_KILLS sets the number of kills (default 50; the documented
// long mode is 1000).
func TestCrashSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test builds and kills a binary")
	}
	kills := 50
	if s := os.Getenv("MDSYNC_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	bin := buildBinary(t)
	data := filepath.Join(t.TempDir(), "data")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))

	type ack struct {
		app, user, op string
		part          int32
		off           int64
		code          int32
	}
	var acks []ack
	for i := 1; i <= kills; i++ {
		cmd := exec.Command(bin, "stress", "--data", data, "--seed", strconv.Itoa(i), "--users", "40")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill at a random point once the process is serving.
		deadline := time.After(10 * time.Second)
		ready := false
		for !ready {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("run %d: exited before READY: %v", i, cmd.Wait())
				}
				ready = l == "READY"
			case <-deadline:
				t.Fatalf("run %d: not ready after 10s", i)
			}
		}
		time.Sleep(time.Duration(5+rng.IntN(150)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for l := range lines {
			f := strings.Fields(l)
			if len(f) != 7 || f[0] != "ACK" {
				continue // a torn last line: the op was not acknowledged in full
			}
			p, _ := strconv.Atoi(f[4])
			o, _ := strconv.ParseInt(f[5], 10, 64)
			c, _ := strconv.Atoi(f[6])
			acks = append(acks, ack{f[1], f[2], f[3], int32(p), o, int32(c)})
		}
		cmd.Wait()
	}
	if len(acks) < kills {
		t.Fatalf("only %d acknowledged operations over %d runs: the load did not run", len(acks), kills)
	}

	// Recover the way the server does, then check every acknowledgement.
	ctx := context.Background()
	n, err := node.New(ctx, node.Options{Dir: data})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	seen := map[string]bool{}
	for _, a := range acks {
		stream := engine.UserStream(a.app, a.user)
		d, ok, err := n.Store.Decision(a.app, stream, a.user, a.op)
		if err != nil || !ok {
			t.Fatalf("acknowledged %s/%s lost after crashes (%v)", a.user, a.op, err)
		}
		if d.Partition != a.part || d.Offset != a.off || d.Code != a.code {
			t.Fatalf("%s: acknowledged at %d/%d code %d, projection says %d/%d code %d", a.op, a.part, a.off, a.code, d.Partition, d.Offset, d.Code)
		}
		ents, err := n.Log.Read(ctx, a.part, a.off, 1)
		if err != nil || len(ents) != 1 {
			t.Fatalf("%s: log read at %d/%d: %v", a.op, a.part, a.off, err)
		}
		ev, err := engine.Decode(ents[0].Value)
		if err != nil || ev.ClientOpId != a.op {
			t.Fatalf("%s: log holds %v at %d/%d", a.op, ev.GetClientOpId(), a.part, a.off)
		}
		seen[a.op] = true
	}
	// Applied exactly once: each partition's applied count equals the
	// number of distinct operations in it, and nothing is left unapplied.
	for p := int32(0); p < n.Log.Partitions(); p++ {
		end, evs := readPartition(ctx, t, n.Log, p)
		if why := appliedOnce(n.Store.Checkpoint(p), end, evs); why != "" {
			t.Fatalf("partition %d: %s", p, why)
		}
	}
	live, err := n.Store.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := projections.Rebuild(ctx, n.Log, projections.Options{Dir: filepath.Join(t.TempDir(), "rebuild")})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	rebuilt, _ := rb.Digest()
	if live != rebuilt {
		diff, _ := n.Store.Diff(rb, 20)
		t.Fatalf("digest after %d kills %s != rebuild %s; differences (live, rebuild):\n%s", kills, live, rebuilt, strings.Join(diff, "\n"))
	}
	t.Logf("%d kills, %d acknowledged operations verified, digest %s", kills, len(acks), live[:16])
}
