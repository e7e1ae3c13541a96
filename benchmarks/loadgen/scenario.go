package loadgen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"
)

// Scenario is one benchmark run's workload, read from a JSON file
// (benchmarks/scenarios/*.json). Zero fields take the defaults of
// defaultScenario has no mix: a scenario with load states its own.; Validate bounds every size so a typo cannot ask for a
// billion connections.
type Scenario struct {
	Name string `json:"name"`
	App  string `json:"app"`

	// Population: Users × DevicesPerUser devices, device j of a user on
	// platform j%Platforms+1. PlatformLimit is the app's per-platform device
	// limit (POLICY_SET, auto-login kicks the oldest); the steady population
	// must fit in it, so only the mix's eviction logins evict.
	Users          int `json:"users"`
	DevicesPerUser int `json:"devices_per_user"`
	Platforms      int `json:"platforms"`
	PlatformLimit  int `json:"platform_limit"`

	// Groups of GroupSize random users each, created before the load.
	Groups    int `json:"groups"`
	GroupSize int `json:"group_size"`

	// ConnectConcurrency bounds the logins in flight while the population
	// connects; SampleEvery is how many connections pass between two RSS
	// samples (the connections-against-RSS plot).
	ConnectConcurrency int `json:"connect_concurrency"`
	SampleEvery        int `json:"sample_every"`
	// IdleSeconds holds the connected population idle before the load (the
	// connections scenario measures memory per idle device here).
	IdleSeconds float64 `json:"idle_seconds"`

	// Ramp: offered load from FromRate to ToRate ops/s in Steps equal steps
	// of StepSeconds each (latency against offered load). Steady: Rate
	// ops/s for Seconds; Rate 0 is a closed loop of Concurrency workers.
	Ramp   Ramp   `json:"ramp"`
	Steady Steady `json:"steady"`
	// Concurrency bounds the operations in flight; an open-loop tick that
	// finds all of them busy is counted as missed, not queued.
	Concurrency int `json:"concurrency"`
	Mix         Mix `json:"mix"`
	BodyBytes   int `json:"body_bytes"`
	// ReconnectOfflineMs is how long a reconnecting device stays away
	// before it comes back and catches up.
	ReconnectOfflineMs int `json:"reconnect_offline_ms"`

	// CatchUp: Devices devices (whole users) go offline, Missed group
	// messages are sent to them, then they all reconnect at once.
	CatchUp CatchUp `json:"catchup"`

	// Baseline runs the same closed loop against a bare protocol echo
	// server in this process, for the same-run ratio.
	Baseline        bool    `json:"baseline"`
	BaselineSeconds float64 `json:"baseline_seconds"`
	BaselineDevices int     `json:"baseline_devices"`
	SourceAddrs     int     `json:"source_addrs"`
	// PasswordLogins logs devices in with the password (an argon2 hash
	// per login, rate limited per user and IP) instead of an issued token.
	PasswordLogins   bool    `json:"password_logins"`
	HeartbeatSeconds float64 `json:"heartbeat_seconds"`
	// CountBusy: an op the server refuses as busy (1019, not decided) is
	// returned by the SDK at once (client.Config.ReturnBusy) and counted
	// in its phase's busy column, not resent and not in the op latency
	// (which is then the accepted ops'); a closed-loop worker waits the
	// refusal's retry_after_ms before its next op. Default false: the SDK
	// resends it inside the call, and the bench books a slow success.
	CountBusy bool `json:"count_busy"`
}

// Ramp is the stepped offered load.
type Ramp struct {
	FromRate    float64 `json:"from_rate"`
	ToRate      float64 `json:"to_rate"`
	Steps       int     `json:"steps"`
	StepSeconds float64 `json:"step_seconds"`
	// OverloadFactor, when set, adds one more step of StepSeconds after
	// the ramp, offered at OverloadFactor × the highest rate any ramp step
	// achieved (the saturating rate, measured in this run): past
	// saturation, does goodput hold and is the excess refused early?
	// 0: no such step.
	OverloadFactor float64 `json:"overload_factor"`
}

// Steady is the constant phase after the ramp.
type Steady struct {
	Rate    float64 `json:"rate"`
	Seconds float64 `json:"seconds"`
}

// Mix weighs the operations of the load; an operation is picked with
// probability weight/sum.
type Mix struct {
	UserMessage   int `json:"user_message"`   // MESSAGE_SEND to another user
	GroupMessage  int `json:"group_message"`  // MESSAGE_SEND to a group the sender is in
	Receipt       int `json:"receipt"`        // READ_RECEIPT for a received message
	Operation     int `json:"operation"`      // CONVERSATION_PIN/UNPIN (multi-device sync)
	EvictionLogin int `json:"eviction_login"` // a new device logs in and evicts one of ours
	Reconnect     int `json:"reconnect"`      // a device drops, misses events, reconnects
}

// CatchUp is the missed-events phase.
type CatchUp struct {
	Devices int `json:"devices"`
	Missed  int `json:"missed"`
}

// Limits of a scenario: enough for the connections scenario, small enough
// that a typo fails fast.
const (
	maxDevices     = 200_000
	maxUsers       = 100_000
	maxPerUser     = 16
	maxPlatforms   = 100
	maxGroups      = 1_000
	maxGroupSize   = 1_000
	maxConcurrency = 10_000
	maxRate        = 1_000_000
	maxSeconds     = 3_600
	maxBody        = 16 << 10
	maxMissed      = 100_000
	maxSourceAddrs = 250
	maxSteps       = 100
	maxCatchUpDevs = 10_000
)

func defaultScenario() Scenario {
	return Scenario{
		Name: "custom", App: "bench",
		Users: 10, DevicesPerUser: 2, Platforms: 2, PlatformLimit: 1,
		ConnectConcurrency: 64, SampleEvery: 0, Concurrency: 32, BodyBytes: 64, ReconnectOfflineMs: 300,
		SourceAddrs:      1,
		HeartbeatSeconds: 20,
		BaselineSeconds:  3,
	}
}

// LoadScenario reads a scenario file over the defaults. Unknown fields are
// an error: a misspelt knob must not silently keep its default.
func LoadScenario(path string) (Scenario, error) {
	s := defaultScenario()
	b, err := os.ReadFile(path)
	if err != nil {
		return s, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return s, fmt.Errorf("scenario %s: %w", path, err)
	}
	return s, s.Validate()
}

// Devices is the steady population.
func (s Scenario) Devices() int { return s.Users * s.DevicesPerUser }

// Validate checks every field against its range.
func (s Scenario) Validate() error {
	type rng struct {
		name     string
		v        float64
		min, max float64
	}
	checks := []rng{
		{"users", float64(s.Users), 2, maxUsers},
		{"devices_per_user", float64(s.DevicesPerUser), 1, maxPerUser},
		{"platforms", float64(s.Platforms), 1, maxPlatforms},
		{"platform_limit", float64(s.PlatformLimit), 1, 100},
		{"groups", float64(s.Groups), 0, maxGroups},
		{"group_size", float64(s.GroupSize), 0, maxGroupSize},
		{"connect_concurrency", float64(s.ConnectConcurrency), 1, maxConcurrency},
		{"sample_every", float64(s.SampleEvery), 0, maxDevices},
		{"idle_seconds", s.IdleSeconds, 0, maxSeconds},
		{"ramp.from_rate", s.Ramp.FromRate, 0, maxRate},
		{"ramp.to_rate", s.Ramp.ToRate, 0, maxRate},
		{"ramp.steps", float64(s.Ramp.Steps), 0, maxSteps},
		{"ramp.step_seconds", s.Ramp.StepSeconds, 0, maxSeconds},
		{"ramp.overload_factor", s.Ramp.OverloadFactor, 0, 10},
		{"steady.rate", s.Steady.Rate, 0, maxRate},
		{"steady.seconds", s.Steady.Seconds, 0, maxSeconds},
		{"concurrency", float64(s.Concurrency), 1, maxConcurrency},
		{"body_bytes", float64(s.BodyBytes), 16, maxBody},
		{"reconnect_offline_ms", float64(s.ReconnectOfflineMs), 0, 60_000},
		{"catchup.devices", float64(s.CatchUp.Devices), 0, maxCatchUpDevs},
		{"catchup.missed", float64(s.CatchUp.Missed), 0, maxMissed},
		{"baseline_seconds", s.BaselineSeconds, 0, maxSeconds},
		{"baseline_devices", float64(s.BaselineDevices), 0, maxConcurrency},
		{"source_addrs", float64(s.SourceAddrs), 1, maxSourceAddrs},
		{"heartbeat_seconds", s.HeartbeatSeconds, 1, 60},
	}
	for _, c := range checks {
		if c.v < c.min || c.v > c.max || c.v != c.v {
			return fmt.Errorf("scenario %q: %s = %v, want %v..%v", s.Name, c.name, c.v, c.min, c.max)
		}
	}
	if s.App == "" || len(s.App) > 64 {
		return fmt.Errorf("scenario %q: app must be 1..64 bytes", s.Name)
	}
	if s.Devices() > maxDevices {
		return fmt.Errorf("scenario %q: %d devices, at most %d", s.Name, s.Devices(), maxDevices)
	}
	// The steady population fits the platform limit, so nothing but the
	// mix's eviction logins evicts.
	if perPlatform := (s.DevicesPerUser + s.Platforms - 1) / s.Platforms; perPlatform > s.PlatformLimit {
		return fmt.Errorf("scenario %q: %d devices per user on %d platforms need platform_limit >= %d", s.Name, s.DevicesPerUser, s.Platforms, perPlatform)
	}
	if s.Groups > 0 && (s.GroupSize < 2 || s.GroupSize > s.Users) {
		return fmt.Errorf("scenario %q: group_size %d must be 2..users (%d)", s.Name, s.GroupSize, s.Users)
	}
	if s.Ramp.Steps > 0 && (s.Ramp.StepSeconds <= 0 || s.Ramp.ToRate <= 0) {
		return fmt.Errorf("scenario %q: a ramp needs step_seconds and to_rate", s.Name)
	}
	if s.Ramp.OverloadFactor != 0 && (s.Ramp.Steps == 0 || s.Ramp.OverloadFactor < 1) {
		return fmt.Errorf("scenario %q: ramp.overload_factor needs ramp steps and must be >= 1", s.Name)
	}
	if s.Mix.GroupMessage > 0 && s.Groups == 0 {
		return fmt.Errorf("scenario %q: mix.group_message needs groups", s.Name)
	}
	for _, w := range []int{s.Mix.UserMessage, s.Mix.GroupMessage, s.Mix.Receipt, s.Mix.Operation, s.Mix.EvictionLogin, s.Mix.Reconnect} {
		if w < 0 || w > 1_000_000 {
			return fmt.Errorf("scenario %q: mix weights must be 0..1000000", s.Name)
		}
	}
	if s.loadSeconds() > 0 && s.Mix.total() == 0 {
		return fmt.Errorf("scenario %q: a load phase needs a mix", s.Name)
	}
	if s.CatchUp.Devices > 0 {
		// Whole users go offline, and one more user sends.
		if users := (s.CatchUp.Devices + s.DevicesPerUser - 1) / s.DevicesPerUser; users >= s.Users {
			return fmt.Errorf("scenario %q: catchup.devices %d needs fewer than all %d users", s.Name, s.CatchUp.Devices, s.Users)
		}
		if s.CatchUp.Missed < 1 {
			return fmt.Errorf("scenario %q: catchup.missed must be >= 1", s.Name)
		}
	}
	return nil
}

func (m Mix) total() int {
	return m.UserMessage + m.GroupMessage + m.Receipt + m.Operation + m.EvictionLogin + m.Reconnect
}

func (s Scenario) loadSeconds() float64 {
	steps := s.Ramp.Steps
	if s.Ramp.OverloadFactor > 0 {
		steps++
	}
	return float64(steps)*s.Ramp.StepSeconds + s.Steady.Seconds
}

// Phase is one stretch of offered load: Rate ops/s (0 = closed loop).
// Overload > 0: Rate is Overload × the best rate the ramp steps before it
// achieved, known only when it starts.
type Phase struct {
	Name     string
	Rate     float64
	Overload float64
	Duration time.Duration
}

// OverloadPhase is the name of the step past saturation.
const OverloadPhase = "overload"

// Phases lists the ramp steps, the overload step, then the steady phase.
func (s Scenario) Phases() []Phase {
	var out []Phase
	for i := 0; i < s.Ramp.Steps; i++ {
		rate := s.Ramp.ToRate
		if s.Ramp.Steps > 1 {
			rate = s.Ramp.FromRate + (s.Ramp.ToRate-s.Ramp.FromRate)*float64(i)/float64(s.Ramp.Steps-1)
		}
		out = append(out, Phase{Name: fmt.Sprintf("ramp-%d", i+1), Rate: rate, Duration: secs(s.Ramp.StepSeconds)})
	}
	if s.Ramp.Steps > 0 && s.Ramp.OverloadFactor > 0 {
		out = append(out, Phase{Name: OverloadPhase, Overload: s.Ramp.OverloadFactor, Duration: secs(s.Ramp.StepSeconds)})
	}
	if s.Steady.Seconds > 0 {
		out = append(out, Phase{Name: "steady", Rate: s.Steady.Rate, Duration: secs(s.Steady.Seconds)})
	}
	return out
}

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
