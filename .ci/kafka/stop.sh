#!/usr/bin/env bash
# Stop the broker start.sh started (same env) and remove its state dir.
# Safe to call when nothing runs; exits 0 either way, so CI can always call
# it. KAFKA_KEEP=1 keeps the state dir (logs) for a post-mortem.
set -uo pipefail

port=${KAFKA_PORT:-19092}
state=${KAFKA_STATE:-${TMPDIR:-/tmp}/mdsync-kafka-$port}

if [[ -f $state/pid ]]; then
	pid=$(cat "$state/pid")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null
		# A controlled shutdown takes a few seconds; do not wait forever.
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "stop.sh: broker $pid ignored TERM for 20 s; killing it" >&2
			kill -KILL "$pid" 2>/dev/null
		fi
	fi
	rm -f "$state/pid"
fi
if [[ ${KAFKA_KEEP:-} != 1 && -d $state ]]; then
	rm -rf "$state"
fi
exit 0
