package restapi

import (
	"net/http"
	"time"

	"github.com/mdsync/mdsync/engine"
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// Aliases in the shape of the Easemob server REST API (account system:
// the online devices of a user, forced logout from all devices or from
// one), so an app server migrating to mdsync changes its host and keeps its
// calls. {org} is accepted and echoed, {app} is the mdsync app; the
// "resource" of a device is its login ID. Each maps onto an mdsync route:
//
//	GET    /{org}/{app}/users/{user}/resources            → GET    /v1/apps/{app}/users/{user}/devices
//	GET    /{org}/{app}/users/{user}/disconnect           → DELETE /v1/apps/{app}/users/{user}/devices
//	DELETE /{org}/{app}/users/{user}/disconnect/{resource} → DELETE /v1/apps/{app}/users/{user}/devices/{login_id}
//
// Responses carry Easemob's envelope (action, application, organization,
// applicationName, path, uri, timestamp, duration, entities, data); errors
// keep mdsync's {"code","message"} body and statuses.

type emEnvelope struct {
	Action          string `json:"action"`
	Application     string `json:"application"`
	ApplicationName string `json:"applicationName"`
	Organization    string `json:"organization"`
	Path            string `json:"path"`
	URI             string `json:"uri"`
	Timestamp       int64  `json:"timestamp"`
	Duration        int64  `json:"duration"`
	Entities        []any  `json:"entities"`
	Data            any    `json:"data"`
}

type emResource struct {
	Res        string `json:"res"`
	DeviceUUID string `json:"device_uuid"`
	DeviceName string `json:"device_name"`
	// mdsync's own fields beside Easemob's.
	Platform  int32 `json:"platform"`
	Connected bool  `json:"connected"`
}

type emResult struct {
	Result bool `json:"result"`
}

func emWrite(w http.ResponseWriter, r *http.Request, action string, start time.Time, data any) {
	app := r.PathValue("app")
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	writeJSON(w, http.StatusOK, emEnvelope{Action: action, Application: app, ApplicationName: app,
		Organization: r.PathValue("org"), Path: r.URL.Path, URI: scheme + "://" + r.Host + r.URL.Path,
		Timestamp: time.Now().UnixMilli(), Duration: time.Since(start).Milliseconds(), Entities: []any{}, Data: data})
}

func (a *api) emResources(w http.ResponseWriter, r *http.Request, _ principal) {
	start := time.Now()
	ds, ok := a.devicesOf(w, r)
	if !ok {
		return
	}
	out := make([]emResource, 0, len(ds))
	for _, d := range ds {
		out = append(out, emResource{Res: d.LoginID, DeviceUUID: d.LoginID, DeviceName: d.DeviceName, Platform: d.Platform, Connected: d.Connected})
	}
	emWrite(w, r, "get", start, out)
}

func (a *api) emDisconnectAll(w http.ResponseWriter, r *http.Request, p principal) {
	start := time.Now()
	if !validPath(w, r, "app", "user") {
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	op := &pb.Event{App: r.PathValue("app"), ClientOpId: id, Kind: pb.Kind_KIND_KICK_ALL_DEVICES, Actor: actor(r, p)}
	if _, ok := a.decide(w, r, op); ok {
		emWrite(w, r, "get", start, emResult{Result: true})
	}
}

// emDisconnect kicks one device; a device that is not logged in answers
// result false (Easemob's shape) rather than mdsync's 404.
func (a *api) emDisconnect(w http.ResponseWriter, r *http.Request, p principal) {
	start := time.Now()
	if !validPath(w, r, "app", "user", "resource") {
		return
	}
	id, ok := opID(w, r)
	if !ok {
		return
	}
	op := &pb.Event{App: r.PathValue("app"), ClientOpId: id, Kind: pb.Kind_KIND_KICK_DEVICE, Actor: actor(r, p),
		Payload: &pb.Event_KickDevice{KickDevice: &pb.KickDevice{LoginId: r.PathValue("resource")}}}
	d, err := a.submit(r.Context(), op)
	if err != nil {
		a.writeCoded(w, err)
		return
	}
	switch engine.Code(d.Code) {
	case engine.CodeOK:
		emWrite(w, r, "delete", start, emResult{Result: true})
	case engine.CodeNotFound:
		emWrite(w, r, "delete", start, emResult{Result: false})
	default:
		writeError(w, statusFor(engine.Code(d.Code)), engine.Code(d.Code), d.Message)
	}
}
