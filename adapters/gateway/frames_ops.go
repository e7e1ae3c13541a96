package gateway

import (
	"time"

	"github.com/mdsync/mdsync/engine"
)

// CodeBusy refuses an operation because the connection's or the gateway's
// operations in flight are at their bound (Options.MaxOpsInFlight,
// Options.MaxGatewayOpsInFlight). The op was not decided: retry it after
// the result's retry_after_ms.
const CodeBusy = engine.CodeBusy

// retryAfter is the retry_after_ms of a refusal with code, 0 when retrying
// will not help: 1019 (busy: not decided) after BusyRetryAfter; 1009
// (unavailable: the log or the store did not answer in time) and 1018
// without an owner's address (the partition is moving or being restored)
// after UnavailableRetryAfter. A 1018 naming the owner is a redirect, not
// a retry.
func (g *Gateway) retryAfter(code engine.Code, addr string) int64 {
	var d time.Duration
	switch {
	case code == engine.CodeBusy:
		d = g.o.BusyRetryAfter
	case code == engine.CodeUnavailable, code == engine.CodeNotOwner && addr == "":
		d = g.o.UnavailableRetryAfter
	}
	return d.Milliseconds()
}
