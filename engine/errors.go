package engine

import (
	"errors"
	"fmt"
	"time"
)

// Code is a wire error code. Codes below 1000 are the ones IM clients already
// know from the vendor SDKs; mdsync's own codes start at 1001.
type Code int32

// Codes known to clients (DESIGN.md, "Error codes clients already know").
const (
	CodeOK                  Code = 0
	CodeLoginOtherDevice    Code = 206 // kicked by a newer login; carries its name and extension
	CodeUserRemoved         Code = 207
	CodeTooManyDevices      Code = 214 // auto-login refused under KEEP_CURRENT
	CodePasswordChanged     Code = 216
	CodeKickedByOtherDevice Code = 217 // kickDevice / kickAllDevices
)

// mdsync's own codes.
const (
	CodeInvalidArgument Code = 1001 // a field is malformed or out of range
	CodeUnknownKind     Code = 1002
	CodeMissingField    Code = 1003
	CodeTooLarge        Code = 1004 // a size limit was exceeded
	CodeNotFound        Code = 1005 // e.g. kicking a device that is not logged in
	CodeConflict        Code = 1006 // e.g. an active login ID reused on another platform
	// 1007 is reserved (was "user removed"; removal is enforced by the auth layer).
	CodeForbidden       Code = 1008 // the actor may not do this
	CodeUnavailable     Code = 1009 // the log or projection is not serving
	CodeInternal        Code = 1010
	CodeNotMember       Code = 1011
	CodeMuted           Code = 1012
	CodeUnauthenticated Code = 1013
	CodeRateLimited     Code = 1014
	CodeResync          Code = 1015 // a device's position cannot be continued: take a snapshot
	CodeSlowConsumer    Code = 1016 // a connection's send queue overflowed: it was closed
	CodeIdleTimeout     Code = 1017 // no frame within the heartbeat timeout: the connection was closed
	CodeNotOwner        Code = 1018 // another process owns the user's partition: reconnect to it
	CodeBusy            Code = 1019 // in-flight work is at its bound: not decided, retry after the advertised delay
)

// Error is an error with a wire code. Callers match it with errors.As, or
// compare codes with CodeOf; errors.Is sees through it to its cause.
type Error struct {
	Code    Code
	Message string // what the client is told (the wire message)
	// Err is the cause, when the error wraps one (a log that closed, a
	// Pebble read that failed): Unwrap returns it, so errors.Is(err,
	// ErrLogClosed) holds for an operation refused because the log closed.
	// It never goes on the wire; Message does.
	Err error
	// RetryAfter, on a CodeBusy refusal from Engine.Begin, is when sending
	// the op again may be admitted (derived from the node's drain rate);
	// 0 on other errors.
	RetryAfter time.Duration
	// actorChecked: a 1018 for an operation whose actor this process checked
	// against the actor's own partition before finding that another process
	// decides its stream (see ActorWasChecked).
	actorChecked bool
}

// ActorWasChecked reports whether err is a 1018 for an operation whose actor
// this process already found active (Engine.Begin): a forwarder may tell the
// owner so (ActorChecked), since the owner may not serve the actor's partition.
func ActorWasChecked(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == CodeNotOwner && e.actorChecked
}

func (e *Error) Error() string { return fmt.Sprintf("mdsync: %d: %s", e.Code, e.Message) }

// Unwrap returns the cause (nil when there is none).
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code carried by err, CodeOK for nil, and CodeInternal
// for an error that carries none.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
