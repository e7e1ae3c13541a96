package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/mdsync/mdsync/adapters/node"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// runStress submits random session operations through the engine on the
// embedded log, from several goroutines, and prints one line per
// acknowledged operation:
//
//	ACK <app> <user> <client_op_id> <partition> <offset> <code>
//
// A line is printed only after Submit returned, i.e. after the event was
// durable and applied. The crash test SIGKILLs this process at random
// points and checks every printed operation against the log afterwards.
func runStress(args []string) error {
	fs := flag.NewFlagSet("stress", flag.ContinueOnError)
	dir := fs.String("data", "", "data directory (required)")
	users := fs.Int("users", 50, "users to spread operations over")
	workers := fs.Int("workers", 8, "concurrent submitters")
	ops := fs.Int("ops", 0, "operations per worker; 0 runs until killed")
	seed := fs.Uint64("seed", 1, "random seed; also makes client op ids unique per run")
	parts := fs.Int("partitions", 4, "partitions of a new log")
	kf := stressKafkaFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("stress: --data is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var n *node.Node
	var err error
	if kf.brokers != "" {
		n, err = kf.open(ctx, *dir, int32(*parts))
	} else {
		n, err = node.New(ctx, node.Options{Dir: *dir, Partitions: int32(*parts)})
	}
	if err != nil {
		return err
	}
	defer n.Close()

	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	fmt.Fprintln(out, "READY")
	out.Flush()

	var wg sync.WaitGroup
	errs := make(chan error, *workers)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(*seed, uint64(w)))
			for i := 0; *ops == 0 || i < *ops; i++ {
				op := kf.op(rng, *users, fmt.Sprintf("s%d-w%d-%d", *seed, w, i))
				d, err := n.Engine.Submit(ctx, op)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					if busyWait(err) || kf.transient(err) {
						continue
					}
					errs <- err
					return
				}
				mu.Lock()
				fmt.Fprintf(out, "ACK %s %s %s %d %d %d\n", op.App, op.Actor.User, op.ClientOpId, d.Partition, d.Offset, d.Code)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// busyWait reports whether err is the node's busy refusal (1019, refused
// before anything was appended: a broker restart or a slow fsync leaves the
// oldest op waiting past the admission bound), after waiting the
// retry_after it carries, as a client does.
func busyWait(err error) bool {
	var e *engine.Error
	if !errors.As(err, &e) || e.Code != engine.CodeBusy {
		return false
	}
	time.Sleep(max(e.RetryAfter, time.Millisecond))
	return true
}

func stressOp(rng *rand.Rand, users int, opID string) *pb.Event {
	user := fmt.Sprintf("u%d", rng.IntN(users))
	ev := &pb.Event{App: "stress", ClientOpId: opID, Actor: &pb.Actor{User: user}}
	device := fmt.Sprintf("%s-d%d", user, rng.IntN(12))
	switch r := rng.IntN(100); {
	case r < 70:
		ev.Kind = pb.Kind_KIND_LOGIN
		ev.Payload = &pb.Event_Login{Login: &pb.Login{
			Platform: int32(1 + rng.IntN(3)), LoginId: device,
			DeviceName: "stress", AutoLogin: rng.IntN(4) == 0,
		}}
	case r < 85:
		ev.Kind = pb.Kind_KIND_LOGOUT
		ev.Actor.LoginId = device
	case r < 97:
		ev.Kind = pb.Kind_KIND_KICK_DEVICE
		ev.Payload = &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: device}}
	default:
		ev.Kind = pb.Kind_KIND_KICK_ALL_DEVICES
	}
	return ev
}
