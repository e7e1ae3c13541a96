#!/usr/bin/env bash
# Runs the Kafka log suites against a real Apache Kafka broker (KRaft,
# single node, 127.0.0.1:19092): fetch the jars with Maven, start the broker
# with Java 17, run the tests, always stop the broker.
set -uo pipefail
cd "$(dirname "$0")/../.."
.ci/kafka/fetch.sh || exit 1
start=$(date +%s)
brokers=$(.ci/kafka/start.sh) || { .ci/kafka/stop.sh; exit 1; }
trap '.ci/kafka/stop.sh' EXIT
echo "kafka broker at $brokers, started in $(( $(date +%s) - start ))s"
log=$(mktemp)
MDSYNC_KAFKA_BROKERS=$brokers MDSYNC_NODE_LOG=kafka go test -count=1 ./adapters/kafkalog/ ./adapters/node/ ./adapters/bus/ 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Fault tests of the real binary: broker restart (needs the scripts),
# SIGKILL, rebalance between two processes.
MDSYNC_KAFKA_BROKERS=$brokers MDSYNC_KAFKA_SCRIPTS=$PWD/.ci/kafka go test -count=1 -v -run '^TestKafkaFault' ./cmd/mdsync/ 2>&1 |
	grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic)|kafka_fault_test' | tee -a "$log"
fstatus=${PIPESTATUS[0]}
((status == 0)) && status=$fstatus
# The cluster suite: the scenario suite on three nodes of one group, and
# three serve binaries (readiness after SIGKILL, the seed scenarios end to
# end, the nemesis with broker restarts).
# The binaries first: the nemesis restarts the broker, which reloads every
# topic the suites created; fewer topics, a shorter restart.
clog=$(mktemp)
MDSYNC_KAFKA_BROKERS=$brokers MDSYNC_KAFKA_SCRIPTS=$PWD/.ci/kafka go test -count=1 -v -timeout 20m -run '^(TestCluster|TestNemesis)' ./cmd/mdsync/ 2>&1 |
	grep -E '^(=== RUN|--- |ok|FAIL|PASS|panic)|(cluster|nemesis)_test' | tee "$clog"
cstatus=${PIPESTATUS[0]}
MDSYNC_KAFKA_BROKERS=$brokers MDSYNC_NODE_LOG=cluster go test -count=1 ./adapters/node/ 2>&1 | tee -a "$clog"
nstatus=${PIPESTATUS[0]}
((cstatus == 0)) && cstatus=$nstatus
echo "cluster suite (real broker): $(grep -c '^ok ' "$clog" || true) passed, $(grep -c -E '^FAIL[[:space:]]+[^[:space:]]' "$clog" || true) failed"
cat "$clog" >>"$log"
((status == 0)) && status=$cstatus
passed=$(grep -c '^ok ' "$log" || true)
failed=$(grep -c -E '^FAIL[[:space:]]+[^[:space:]]' "$log" || true)
echo
echo "kafka (real broker) packages: $passed passed, $failed failed"
exit "$status"
