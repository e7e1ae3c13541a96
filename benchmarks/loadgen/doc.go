// Package loadgen is mdsync's end-to-end load generator, the library
// behind cmd/mdsync-bench: it simulates users with several devices each over
// real WebSocket connections (the Go SDK in client/), against an `mdsync
// serve` it starts itself (StartServer) or one it is given, drives the
// scenario's phases (a ramp, a step past saturation, a steady phase, a
// catch-up of offline devices, a same-run echo baseline), samples the
// server (RSS, goroutines, CPU time, /metrics), and reports throughput, HDR
// latency percentiles and the baseline ratio as JSON, Markdown and PNG
// plots (Report, WriteOutputs).
//
// Files by job: scenario.go (the scenario file and its phases), run.go
// (Run: one run from server start to baseline), population.go (users,
// devices, groups), device.go (one device's connection and the events it
// receives), ops.go (the operation mix), phase.go (one phase's load),
// catchup.go (offline devices catching up), echo.go (the baseline server),
// sample.go (the server's RSS, CPU and metrics), report.go and plot.go
// (the outputs), server.go (building and starting mdsync serve), addrs.go
// (loopback source addresses), trace.go (a recorded history read and
// planned: log order, play modes, what waits for what) and trace_play.go
// (RunTrace: the history played against a server as its devices).
package loadgen
