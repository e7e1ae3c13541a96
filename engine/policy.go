package engine

import (
	pb "github.com/mdsync/mdsync/engine/enginepb"
)

// DefaultPlatformLimit is the seeds' default: 4 devices online per platform.
const DefaultPlatformLimit = 4

// DefaultPolicy is an app's policy until its first POLICY_SET: multi-platform
// mode, 4 devices on every platform, auto-login kicks the oldest. Version 0.
func DefaultPolicy() *pb.Policy {
	return &pb.Policy{
		Version:      0,
		Mode:         pb.PlatformMode_PLATFORM_MODE_MULTI,
		DefaultLimit: DefaultPlatformLimit,
		AutoLogin:    pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST,
		SetOffset:    -1,
	}
}

// LimitFor returns the device limit of platform under p. In single-platform
// mode the limit is 1 device in all, which callers handle separately.
func LimitFor(p *pb.Policy, platform int32) int32 {
	// limits are sorted by platform (ValidatePolicy), so a scan is fine for
	// at most 100 entries and keeps the policy a plain, digestible message.
	for _, l := range p.Limits {
		if l.Platform == platform {
			return l.Limit
		}
	}
	return p.DefaultLimit
}

// ValidatePolicy checks a POLICY_SET payload as a caller submits it. The
// version and partition fields are assigned by the engine and not checked.
func ValidatePolicy(p *pb.PolicySet) error {
	switch p.Mode {
	case pb.PlatformMode_PLATFORM_MODE_MULTI, pb.PlatformMode_PLATFORM_MODE_SINGLE:
	default:
		return Errorf(CodeInvalidArgument, "policy.mode %d is not MULTI or SINGLE", int32(p.Mode))
	}
	switch p.AutoLogin {
	case pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KICK_OLDEST, pb.AutoLoginPolicy_AUTO_LOGIN_POLICY_KEEP_CURRENT:
	default:
		return Errorf(CodeInvalidArgument, "policy.auto_login %d is not KICK_OLDEST or KEEP_CURRENT", int32(p.AutoLogin))
	}
	if p.DefaultLimit < 1 || p.DefaultLimit > MaxPlatformLimit {
		return Errorf(CodeInvalidArgument, "policy.default_limit %d is outside [1,%d]", p.DefaultLimit, MaxPlatformLimit)
	}
	if p.TimelineMaxEntries < 0 || p.TimelineMaxEntries > MaxTimelineEntries {
		return Errorf(CodeInvalidArgument, "policy.timeline_max_entries %d is outside [0,%d] (0: default)", p.TimelineMaxEntries, MaxTimelineEntries)
	}
	if p.TimelineMaxAgeMs < 0 || p.TimelineMaxAgeMs > MaxTimelineAgeMs {
		return Errorf(CodeInvalidArgument, "policy.timeline_max_age_ms %d is outside [0,%d] (0: default)", p.TimelineMaxAgeMs, MaxTimelineAgeMs)
	}
	if len(p.Limits) > MaxPlatform {
		return Errorf(CodeTooLarge, "policy.limits has %d entries, limit %d", len(p.Limits), MaxPlatform)
	}
	for i, l := range p.Limits {
		if err := checkPlatform(l.Platform); err != nil {
			return err
		}
		if l.Limit < 1 || l.Limit > MaxPlatformLimit {
			return Errorf(CodeInvalidArgument, "policy limit %d for platform %d is outside [1,%d]", l.Limit, l.Platform, MaxPlatformLimit)
		}
		if i > 0 && p.Limits[i-1].Platform >= l.Platform {
			return Errorf(CodeInvalidArgument, "policy.limits must be sorted by platform, without duplicates")
		}
	}
	return nil
}
