package engine

import (
	"context"
	"errors"
	"fmt"
	"testing"

	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// closedLog is a Log after Close: every call returns ErrLogClosed.
type closedLog struct{}

func (closedLog) Partitions() int32 { return 2 }
func (closedLog) Append(context.Context, []Record) ([]Position, error) {
	return nil, ErrLogClosed
}
func (closedLog) Read(context.Context, int32, int64, int) ([]Entry, error) {
	return nil, ErrLogClosed
}
func (closedLog) End(context.Context, int32) (int64, error) { return 0, ErrLogClosed }
func (closedLog) Close() error                              { return nil }

// emptyProjector has decided nothing and knows every actor.
type emptyProjector struct{}

func (emptyProjector) WaitApplied(context.Context, Position) error { return nil }
func (emptyProjector) Decision(string, string, string, string) (*pb.Decision, bool, error) {
	return nil, false, nil
}
func (emptyProjector) Policy(string) (*pb.Policy, error)         { return DefaultPolicy(), nil }
func (emptyProjector) ActorSession(string, string, string) error { return nil }
func (p emptyProjector) AwaitDecision(pos Position, app, stream, user, op string, done func(*pb.Decision, bool, error)) {
	AwaitByWaiting(p, pos, app, stream, user, op, done)
}

// A Submit on a closed log is refused as unavailable (1009) and keeps its
// cause: callers can tell a closed log from another failure.
func TestSubmitOnClosedLogWrapsErrLogClosed(t *testing.T) {
	e := New(closedLog{}, emptyProjector{}, Options{})
	_, err := e.Submit(context.Background(), &pb.Event{App: "a", ClientOpId: "o1", Kind: pb.Kind_KIND_LOGIN,
		Actor:   &pb.Actor{User: "ann", LoginId: "d1"},
		Payload: &pb.Event_Login{Login: &pb.Login{Platform: 1, LoginId: "d1", DeviceName: "phone"}}})
	if !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Submit on a closed log: %v, want errors.Is ErrLogClosed", err)
	}
	if CodeOf(err) != CodeUnavailable {
		t.Fatalf("code %d, want %d", CodeOf(err), CodeUnavailable)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Message != ErrLogClosed.Error() {
		t.Fatalf("wire message of %v: want %q", err, ErrLogClosed.Error())
	}
}

func TestErrorUnwrap(t *testing.T) {
	cause := errors.New("pebble: disk on fire")
	err := fmt.Errorf("serving: %w", &Error{Code: CodeUnavailable, Message: cause.Error(), Err: cause})
	if !errors.Is(err, cause) {
		t.Fatal("errors.Is does not see through *Error to its cause")
	}
	if (&Error{Code: CodeNotFound, Message: "no such device"}).Unwrap() != nil {
		t.Fatal("an Error without a cause unwraps to something")
	}
}
