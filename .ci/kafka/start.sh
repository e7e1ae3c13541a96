#!/usr/bin/env bash
# Start a single-node KRaft Kafka broker on 127.0.0.1 for tests, in a fresh
# state dir, and wait until it answers a metadata request. Prints the
# bootstrap address on stdout (use it as MDSYNC_KAFKA_BROKERS) and the
# startup time on stderr. Stop it with stop.sh (same env), always.
#
#   KAFKA_VERSION          default 3.9.1 (fetched by fetch.sh if missing)
#   KAFKA_PORT             broker port, default 19092
#   KAFKA_CONTROLLER_PORT  controller port, default 19093
#   KAFKA_STATE            state dir, default ${TMPDIR:-/tmp}/mdsync-kafka-$KAFKA_PORT
#   KAFKA_HEAP             default 512m (small: CI machines have 2 cores)
#   KAFKA_START_TIMEOUT    seconds, default 90
#   KAFKA_REUSE=1          restart on the existing state dir (stop.sh with
#                          KAFKA_KEEP=1 first): same data, no format
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
port=${KAFKA_PORT:-19092}
cport=${KAFKA_CONTROLLER_PORT:-19093}
state=${KAFKA_STATE:-${TMPDIR:-/tmp}/mdsync-kafka-$port}
heap=${KAFKA_HEAP:-512m}
limit=${KAFKA_START_TIMEOUT:-90}

libs=$("$here/fetch.sh" | tail -n 1)

if [[ -f $state/pid ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; then
	echo "start.sh: a broker already runs from $state (pid $(cat "$state/pid")); run stop.sh" >&2
	exit 1
fi
reuse=0
if [[ ${KAFKA_REUSE:-} == 1 && -f $state/data/meta.properties ]]; then
	reuse=1
else
	rm -rf "$state"
	mkdir -p "$state/data"
fi

cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
# One node: internal topics cannot have more replicas than that.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
# Topics are created on purpose (kafkalog Options.CreateTopic); a typo fails.
auto.create.topics.enable=false
PROPS

cat >"$state/log4j.properties" <<'LOG'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
LOG

java_opts=(-Xmx"$heap" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
	-Djava.awt.headless=true -Dlog4j.configuration="file:$state/log4j.properties"
	-cp "$libs/*")

start_ms=$(($(date +%s%N) / 1000000))

# A cluster id is 16 random bytes in unpadded base64url, what
# "kafka-storage.sh random-uuid" prints; made here to save a JVM start.
if ((!reuse)); then
	# One id in 64 starts with '-', which the tool's argument parser takes
	# for an option ("--cluster-id/-t: expected one argument"): draw again.
	cluster_id=-
	while [[ $cluster_id == -* ]]; do
		cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
	done
	java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
		-c "$state/server.properties" >"$state/format.log" 2>&1 ||
		{ cat "$state/format.log" >&2; exit 1; }
fi

setsid nohup java "${java_opts[@]}" kafka.Kafka "$state/server.properties" \
	>>"$state/broker.log" 2>&1 </dev/null &
echo $! >"$state/pid"

# metadata_ok sends a Metadata v0 request (all topics) and succeeds when the
# answer lists at least one broker: the broker is registered and serving.
metadata_ok() {
	local reply
	exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
	# size 14 | api key 3 | version 0 | correlation id 1 | client id "" | 0 topics
	printf '\x00\x00\x00\x0e\x00\x03\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00' >&3
	reply=$(timeout 2 head -c 12 <&3 | od -An -tx1 | tr -d ' \n') || true
	exec 3<&- 3>&-
	# size(4) correlation id 1(4) broker count(4) > 0
	[[ ${#reply} -eq 24 && ${reply:8:8} == 00000001 && ${reply:16:8} != 00000000 ]]
}

deadline=$((SECONDS + limit))
until metadata_ok 2>/dev/null; do
	if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
		echo "start.sh: broker exited; last log lines:" >&2
		tail -n 30 "$state/broker.log" >&2
		exit 1
	fi
	if ((SECONDS >= deadline)); then
		echo "start.sh: broker not answering after ${limit}s; last log lines:" >&2
		tail -n 30 "$state/broker.log" >&2
		"$here/stop.sh" >&2 || true
		exit 1
	fi
	sleep 0.2
done

version=$(basename "$(ls "$libs"/kafka_2.13-*.jar)" .jar)
ms=$(($(date +%s%N) / 1000000 - start_ms))
printf 'start.sh: Kafka %s (%s) up on 127.0.0.1:%s in %d.%01d s (format + start), state %s\n' \
	"${version#kafka_2.13-}" "$(java -version 2>&1 | head -n 1)" "$port" \
	$((ms / 1000)) $((ms % 1000 / 100)) "$state" >&2
echo "127.0.0.1:$port"
