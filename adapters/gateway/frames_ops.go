package gateway

import "github.com/mdsync/mdsync/engine"

// CodeBusy refuses an operation because the connection's or the gateway's
// operations in flight are at their bound (Options.MaxOpsInFlight,
// Options.MaxGatewayOpsInFlight). The op was not decided: retry it after
// the result's retry_after_ms.
const CodeBusy = engine.CodeBusy

// busyResultFrame is the result of an op refused with CodeBusy.
type busyResultFrame struct {
	resultFrame
	RetryAfterMs int64 `json:"retry_after_ms"`
}
