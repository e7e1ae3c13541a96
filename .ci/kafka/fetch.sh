#!/usr/bin/env bash
# Fetch an Apache Kafka broker's jars (kafka_2.13 and its dependencies, plus
# a log binding) through Maven into a cache dir, and print that dir.
# Debian ships no Kafka broker; Maven's repository has the jars.
#
#   KAFKA_VERSION  default 3.9.1 (kafka-go's consumer groups need 3.9.x or
#                  >= 4.0.1: 4.0.0 dropped JoinGroup v0/v1)
#   KAFKA_CACHE    default ${XDG_CACHE_HOME:-$HOME/.cache}/mdsync-kafka
#
# Idempotent: an existing complete cache is reused.
set -euo pipefail

version=${KAFKA_VERSION:-3.9.1}
cache=${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mdsync-kafka}
libs=$cache/$version/libs

if [[ -f $libs/.complete ]]; then
	echo "$libs"
	exit 0
fi

command -v mvn >/dev/null || { echo "fetch.sh: mvn not found" >&2; exit 1; }
command -v java >/dev/null || { echo "fetch.sh: java not found" >&2; exit 1; }

# Kafka 3.x logs through SLF4J 1 + reload4j; 4.x through log4j2. Without a
# binding the broker logs nothing useful.
case $version in
3.*) logdeps='
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>1.2.25</version></dependency>' ;;
*) logdeps='
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>' ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/pom.xml" <<POM
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>mdsync.ci</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>$logdeps
  </dependencies>
</project>
POM

rm -rf "$libs"
mkdir -p "$libs"
# Runtime scope: what the broker needs to run, not its test or provided deps.
# Maven's output goes to stderr: stdout is only the libs dir, for start.sh.
(cd "$work" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
	-DincludeScope=runtime -DoutputDirectory="$libs") >&2
ls "$libs"/kafka_2.13-"$version".jar >/dev/null
touch "$libs/.complete"
echo "$libs"
