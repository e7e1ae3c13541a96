package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mdsync/mdsync/adapters/kafkalog"
	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"github.com/mdsync/mdsync/projections"
)

// Fault tests on a real Kafka broker (MDSYNC_KAFKA_BROKERS; .ci/kafka/ci.sh
// sets it). Each runs the real binary (mdsync stress in owned mode: a
// consumer group member on a fresh topic) under load, injects a fault, and
// ends with every acknowledged operation in the log at its acknowledged
// position, every operation applied exactly once, every accepted message
// to a user on another partition relayed there (a quarter of the load are
// 1:1 messages), and the recovered projection's digest equal to a rebuild
// from offset 0.
//
// The broker restart test also needs MDSYNC_KAFKA_SCRIPTS, the directory of
// stop.sh and start.sh for the broker at MDSYNC_KAFKA_BROKERS (ci.sh sets
// it): it restarts that broker on its data.

const faultParts = 4

func kafkaFaultBrokers(t *testing.T) string {
	b := os.Getenv("MDSYNC_KAFKA_BROKERS")
	if b == "" || testing.Short() {
		t.Skip("needs a real broker: MDSYNC_KAFKA_BROKERS (see .ci/kafka/ci.sh)")
	}
	return b
}

var (
	faultBinOnce sync.Once
	faultBin     string
	faultBinErr  error
)

func buildFaultBin(t *testing.T) string {
	faultBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "mdsync-fault-bin")
		if err != nil {
			faultBinErr = err
			return
		}
		faultBin = filepath.Join(dir, "mdsync")
		if out, err := exec.Command("go", "build", "-o", faultBin, ".").CombinedOutput(); err != nil {
			faultBinErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if faultBinErr != nil {
		t.Fatal(faultBinErr)
	}
	return faultBin
}

type faultAck struct {
	app, user, op string
	part          int32
	off           int64
	code          int32
}

// stressProc is one running `mdsync stress --kafka-brokers ...`.
type stressProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	acks []faultAck
	done chan struct{} // stdout closed
}

type faultRun struct {
	t                     *testing.T
	bin, brokers          string
	topic, group          string
	mu                    sync.Mutex
	all                   []faultAck
	procs                 []*stressProc
	seed                  int
	logDir                string
	stressLogs            []string
	stopped               bool
	brokerRestartDuration time.Duration
}

func newFaultRun(t *testing.T) *faultRun {
	brokers := kafkaFaultBrokers(t)
	id := fmt.Sprintf("%d", time.Now().UnixNano())
	r := &faultRun{t: t, bin: buildFaultBin(t), brokers: brokers,
		topic: "mdsync-fault." + t.Name() + "." + id, group: "mdsync-fault-group." + t.Name() + "." + id, logDir: t.TempDir()}
	t.Cleanup(func() {
		for _, p := range r.procs {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			for _, l := range r.stressLogs {
				b, _ := os.ReadFile(l)
				if len(b) > 4000 {
					b = b[len(b)-4000:]
				}
				t.Logf("%s (tail):\n%s", filepath.Base(l), b)
			}
		}
	})
	return r
}

// start runs one stress process on dir, publishing addr as its owner address.
func (r *faultRun) start(dir, addr string) *stressProc {
	r.seed++
	cmd := exec.Command(r.bin, "stress", "--data", dir, "--seed", strconv.Itoa(r.seed), "--users", "40",
		"--workers", "8", "--partitions", strconv.Itoa(faultParts),
		"--kafka-brokers", r.brokers, "--kafka-topic", r.topic, "--kafka-group", r.group, "--addr", addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.t.Fatal(err)
	}
	logPath := filepath.Join(r.logDir, fmt.Sprintf("stress-%d.log", r.seed))
	lf, err := os.Create(logPath)
	if err != nil {
		r.t.Fatal(err)
	}
	r.stressLogs = append(r.stressLogs, logPath)
	cmd.Stderr = lf
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	p := &stressProc{t: r.t, cmd: cmd, done: make(chan struct{})}
	r.procs = append(r.procs, p)
	go func() {
		defer close(p.done)
		defer lf.Close()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 7 || f[0] != "ACK" {
				continue // READY, or a torn last line: not acknowledged in full
			}
			pt, _ := strconv.Atoi(f[4])
			o, _ := strconv.ParseInt(f[5], 10, 64)
			c, _ := strconv.Atoi(f[6])
			p.mu.Lock()
			p.acks = append(p.acks, faultAck{f[1], f[2], f[3], int32(pt), o, int32(c)})
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *stressProc) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acks)
}

// partitions returns the partitions of p's acknowledged operations since
// the from-th.
func (p *stressProc) partitions(from int) map[int32]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int32]bool{}
	for _, a := range p.acks[min(from, len(p.acks)):] {
		out[a.part] = true
	}
	return out
}

// waitAcks waits until p has acknowledged at least n operations.
func (p *stressProc) waitAcks(n int, limit time.Duration, what string) {
	p.t.Helper()
	deadline := time.Now().Add(limit)
	for p.count() < n {
		select {
		case <-p.done:
			p.t.Fatalf("%s: stress exited after %d acks: %v", what, p.count(), p.cmd.Wait())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: %d acks after %v, want %d", what, p.count(), limit, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals p, waits for it, and adds its acknowledgements to the run's.
func (r *faultRun) stop(p *stressProc, sig syscall.Signal) {
	r.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		r.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		r.t.Fatalf("stress ignored %v for 30s", sig)
	}
	err := p.cmd.Wait()
	if sig == syscall.SIGTERM && err != nil {
		r.t.Fatalf("stress after SIGTERM: %v", err)
	}
	for i, q := range r.procs {
		if q == p {
			r.procs = append(r.procs[:i], r.procs[i+1:]...)
			break
		}
	}
	r.all = append(r.all, p.acks...)
}

// verify recovers dir's projection the way a process does (its checkpoints,
// then catch-up of every partition) and checks the run's acknowledgements
// against it and the log.
func (r *faultRun) verify(dir string) {
	t := r.t
	t.Helper()
	if len(r.all) == 0 {
		t.Fatal("no acknowledged operation: the load did not run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	lg, err := kafkalog.Open(ctx, kafkalog.Options{Brokers: strings.Split(r.brokers, ","), Topic: r.topic, Partitions: faultParts})
	if err != nil {
		t.Fatal(err)
	}
	st, err := projections.Open(projections.Options{Dir: filepath.Join(dir, "proj-kafka"), Partitions: faultParts})
	if err != nil {
		lg.Close()
		t.Fatal(err)
	}
	n, err := node.New(ctx, node.Options{Log: lg, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// The relay of the recovered process appends the copies its dead or
	// stopped predecessor had not: wait until it is idle.
	if err := n.Settle(ctx); err != nil {
		t.Fatalf("settle the recovered node: %v", err)
	}
	// Read each partition once: the operation at every offset, and whether
	// each partition applied every distinct operation exactly once; and
	// the relayed copies: source user, op and recipient.
	var total int64
	opAt := make([][]*pb.Event, faultParts)
	copies := map[string]bool{}
	for p := int32(0); p < faultParts; p++ {
		end, evs := readPartition(ctx, t, lg, p)
		total += end
		opAt[p] = evs
		for _, ev := range evs {
			if dl := ev.GetDeliver(); dl != nil {
				copies[dl.GetSource().GetActor().GetUser()+"\x00"+dl.GetSource().GetClientOpId()+"\x00"+dl.Recipient] = true
			}
		}
		if why := appliedOnce(n.Store.Checkpoint(p), end, evs); why != "" {
			t.Fatalf("partition %d: %s", p, why)
		}
	}
	seen := map[string]bool{}
	messages, relayed := 0, 0
	for _, a := range r.all {
		if seen[a.op] {
			t.Fatalf("%s acknowledged twice", a.op)
		}
		seen[a.op] = true
		d, ok, err := n.Store.Decision(a.app, engine.UserStream(a.app, a.user), a.user, a.op)
		if err != nil || !ok {
			t.Fatalf("acknowledged %s/%s lost (%v)", a.user, a.op, err)
		}
		if d.Partition != a.part || d.Offset != a.off || d.Code != a.code {
			t.Fatalf("%s: acknowledged at %d/%d code %d, projection says %d/%d code %d", a.op, a.part, a.off, a.code, d.Partition, d.Offset, d.Code)
		}
		if a.part < 0 || a.part >= faultParts || a.off < 0 || a.off >= int64(len(opAt[a.part])) || opAt[a.part][a.off].ClientOpId != a.op {
			t.Fatalf("%s: acknowledged at %d/%d, not in the log there", a.op, a.part, a.off)
		}
		// An accepted message to a user on another partition has its copy
		// there, whichever process relayed it.
		m := opAt[a.part][a.off].GetMessage()
		if m == nil || a.code != 0 {
			continue
		}
		messages++
		if engine.PartitionFor([]byte(engine.UserStream(a.app, m.To)), faultParts) == a.part {
			continue
		}
		if !copies[a.user+"\x00"+a.op+"\x00"+m.To] {
			t.Fatalf("message %s from %s to %s (acknowledged at %d/%d) was never relayed", a.op, a.user, m.To, a.part, a.off)
		}
		relayed++
	}
	if messages == 0 {
		t.Fatal("no accepted message: the fan-out was not exercised")
	}
	live, err := n.Store.Digest()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := projections.Rebuild(ctx, lg, projections.Options{Dir: filepath.Join(t.TempDir(), "rebuild")})
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	if want, _ := rb.Digest(); live != want {
		t.Fatalf("digest %s != rebuild %s", live, want)
	}
	t.Logf("%s: %d acknowledged operations verified (%d messages, %d relayed to another partition), %d records in the log, digest %s",
		filepath.Base(dir), len(r.all), messages, relayed, total, live[:16])
}

// (a) The broker is stopped and restarted on its data under load: the
// process keeps running, rejoins the group, restores and serves again.
func TestKafkaFaultBrokerRestart(t *testing.T) {
	r := newFaultRun(t)
	scripts := os.Getenv("MDSYNC_KAFKA_SCRIPTS")
	if scripts == "" {
		t.Skip("needs MDSYNC_KAFKA_SCRIPTS (the .ci/kafka dir of the broker at MDSYNC_KAFKA_BROKERS)")
	}
	dir := filepath.Join(t.TempDir(), "a")
	p := r.start(dir, "127.0.0.1:7201")
	p.waitAcks(300, 120*time.Second, "before the broker restart")
	start := time.Now()
	stop := exec.Command("bash", filepath.Join(scripts, "stop.sh"))
	stop.Env = append(os.Environ(), "KAFKA_KEEP=1")
	if out, err := stop.CombinedOutput(); err != nil {
		t.Fatalf("stop.sh: %v\n%s", err, out)
	}
	down := p.count()
	time.Sleep(time.Second) // the load meets a dead broker
	st := exec.Command("bash", filepath.Join(scripts, "start.sh"))
	st.Env = append(os.Environ(), "KAFKA_REUSE=1")
	if out, err := st.CombinedOutput(); err != nil {
		t.Fatalf("start.sh (reuse): %v\n%s", err, out)
	}
	t.Logf("broker stopped and restarted in %v; %d acks before the stop", time.Since(start).Round(100*time.Millisecond), down)
	p.waitAcks(p.count()+300, 180*time.Second, "after the broker restart")
	r.stop(p, syscall.SIGTERM)
	r.verify(dir)
}

// (b) The process is SIGKILLed under load at random points and restarted
// on its data directory.
func TestKafkaFaultSIGKILL(t *testing.T) {
	r := newFaultRun(t)
	dir := filepath.Join(t.TempDir(), "b")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	const kills = 3
	for i := 0; i < kills; i++ {
		p := r.start(dir, "127.0.0.1:7202")
		p.waitAcks(100, 120*time.Second, fmt.Sprintf("run %d", i))
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		r.stop(p, syscall.SIGKILL)
	}
	p := r.start(dir, "127.0.0.1:7202")
	p.waitAcks(100, 120*time.Second, "after the last kill")
	r.stop(p, syscall.SIGTERM)
	r.verify(dir)
}

// (c) Two processes share the topic: the second joins mid-load (the group
// rebalances, partitions move to it), then the first is SIGKILLed
// mid-load and the second takes over every partition.
func TestKafkaFaultRebalance(t *testing.T) {
	r := newFaultRun(t)
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	t0 := time.Now()
	a := r.start(dirA, "127.0.0.1:7301")
	a.waitAcks(200, 120*time.Second, "A alone")
	t.Logf("%v: A acknowledged 200; starting B", time.Since(t0).Round(100*time.Millisecond))
	b := r.start(dirB, "127.0.0.1:7302")
	b.waitAcks(100, 120*time.Second, "B after joining")
	fromA := a.count()
	a.waitAcks(fromA+100, 60*time.Second, "A after B joined")
	t.Logf("%v: both acknowledge", time.Since(t0).Round(100*time.Millisecond))
	pa, pb := a.partitions(fromA), b.partitions(0)
	for part := range pa {
		if pb[part] {
			// Both may ack one partition only across a move; after the
			// rebalance each acks its own.
			t.Logf("partition %d acknowledged by both (moved during the window)", part)
		}
	}
	if len(pa) == faultParts || len(pb) == 0 {
		t.Fatalf("no partition moved to B: A acks %v, B acks %v", pa, pb)
	}
	r.stop(a, syscall.SIGKILL)
	fromB := b.count()
	// B takes every partition once A's session expires.
	deadline := time.Now().Add(120 * time.Second)
	for len(b.partitions(fromB)) < faultParts {
		if time.Now().After(deadline) {
			t.Fatalf("B acks only partitions %v after A was killed", b.partitions(fromB))
		}
		b.waitAcks(b.count()+1, 120*time.Second, "B after A was killed")
	}
	t.Logf("%v: B acknowledges on every partition", time.Since(t0).Round(100*time.Millisecond))
	r.stop(b, syscall.SIGTERM)
	r.verify(dirB)
	r.verify(dirA)
}
