package restapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/mdsync/mdsync/adapters/auth"
	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
	"google.golang.org/protobuf/encoding/protojson"
)

// The decoders below turn a request body into a request, or a coded error
// (1001 malformed, 1003 missing field). They check shape and sizes; the
// credential store and the engine check the rest. FuzzRESTBodies holds them
// to: never panic, and every accepted body is a valid request.

// readBody reads at most limit bytes; more is 413/1004.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, engine.CodeTooLarge, "body exceeds "+strconv.FormatInt(limit, 10)+" bytes")
		} else {
			writeError(w, http.StatusBadRequest, engine.CodeInvalidArgument, "reading body: "+err.Error())
		}
		return nil, false
	}
	return body, true
}

// decodeStrict decodes exactly one JSON object with no unknown fields.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return engine.Errorf(engine.CodeInvalidArgument, "body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return engine.Errorf(engine.CodeInvalidArgument, "body: data after the JSON object")
	}
	return nil
}

// decodeOperation reads protobuf's JSON mapping of mdsync.v1.Event. The
// envelope fields are the engine's to assign and are cleared; the admin is
// the actor's credential.
func decodeOperation(body []byte) (*pb.Event, error) {
	op, err := decodeEvent(body)
	if err != nil {
		return nil, err
	}
	if op.Actor != nil {
		op.Actor.Admin = true
	}
	return op, nil
}

// decodeEvent reads protobuf's JSON mapping of mdsync.v1.Event with the
// envelope fields cleared and the actor as given.
func decodeEvent(body []byte) (*pb.Event, error) {
	// The WebSocket's op frames are read by the same decoder, so a bad
	// operation gets the same code and message on both (and Validate, on
	// Submit, checks the values for both).
	op, err := engine.DecodeEventJSON(body, true)
	if err != nil {
		return nil, err
	}
	op.SchemaVersion, op.StreamKey, op.EventId, op.TimeUnixMs = 0, "", "", 0
	return op, nil
}

func checkPasswordField(field, pw string) error {
	if pw == "" {
		return engine.Errorf(engine.CodeMissingField, "%s is required", field)
	}
	if len(pw) < auth.MinPasswordBytes || len(pw) > auth.MaxPasswordBytes {
		return engine.Errorf(engine.CodeInvalidArgument, "%s must be %d..%d bytes", field, auth.MinPasswordBytes, auth.MaxPasswordBytes)
	}
	if !utf8.ValidString(pw) {
		return engine.Errorf(engine.CodeInvalidArgument, "%s is not valid UTF-8", field)
	}
	return nil
}

type registerRequest struct {
	User     string `json:"user"`
	Password string `json:"password"`
}

func decodeRegister(body []byte) (registerRequest, error) {
	var req registerRequest
	if err := decodeStrict(body, &req); err != nil {
		return registerRequest{}, err
	}
	if req.User == "" {
		return registerRequest{}, engine.Errorf(engine.CodeMissingField, "user is required")
	}
	if !engine.ValidID(req.User) {
		return registerRequest{}, engine.Errorf(engine.CodeInvalidArgument, "user is not a valid id (1..%d bytes of letters, digits, _-.@)", engine.MaxIDBytes)
	}
	if err := checkPasswordField("password", req.Password); err != nil {
		return registerRequest{}, err
	}
	return req, nil
}

type passwordRequest struct {
	NewPassword string `json:"new_password"`
}

func decodePassword(body []byte) (string, error) {
	var req passwordRequest
	if err := decodeStrict(body, &req); err != nil {
		return "", err
	}
	if err := checkPasswordField("new_password", req.NewPassword); err != nil {
		return "", err
	}
	return req.NewPassword, nil
}

type tokenRequest struct {
	TTLSeconds *int64 `json:"ttl_seconds"`
}

// decodeTokenRequest reads the optional body of POST .../tokens: an empty
// body or no ttl_seconds is the store's default lifetime (0).
func decodeTokenRequest(body []byte) (time.Duration, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return 0, nil
	}
	var req tokenRequest
	if err := decodeStrict(body, &req); err != nil {
		return 0, err
	}
	if req.TTLSeconds == nil {
		return 0, nil
	}
	max := int64(auth.MaxTokenTTL / time.Second)
	if *req.TTLSeconds < 1 || *req.TTLSeconds > max {
		return 0, engine.Errorf(engine.CodeInvalidArgument, "ttl_seconds %d is outside [1,%d]", *req.TTLSeconds, max)
	}
	return time.Duration(*req.TTLSeconds) * time.Second, nil
}

// decodePolicy reads protobuf's JSON mapping of mdsync.v1.PolicySet and
// validates it; version and partition fields are the engine's.
func decodePolicy(body []byte) (*pb.PolicySet, error) {
	ps := &pb.PolicySet{}
	if err := protojson.Unmarshal(body, ps); err != nil {
		return nil, engine.Errorf(engine.CodeInvalidArgument, "body is not an mdsync.v1.PolicySet in JSON: %v", err)
	}
	ps.Version, ps.Partition, ps.Partitions = 0, 0, 0
	if err := engine.ValidatePolicy(ps); err != nil {
		return nil, err
	}
	return ps, nil
}
