#!/usr/bin/env bash
# Installs the production parts that run here as processes, into a cache reused by later runs:
#   Apache Kafka: its jars from Maven Central (deploy/kafka/pom.xml) laid out as an installation like the
#     image's /opt/kafka (libs/ and the bin/ commands that deploy/kafka's scripts call);
#   the OPA server: built from its Go module;
#   Slurm 22.05 with accounting (slurmdbd on MariaDB) and munge: Debian's packages, installed once.
# Prints the two installation paths as shell assignments (KAFKA_HOME=..., OPA_BIN=...).
set -euo pipefail
cd "$(dirname "$0")/.."

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/kafka/pom.xml)"
OPA_VERSION="v1.22.4"
CACHE="${SOVEREIGN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sovereign-marketplace}"
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
OPA_HOME="$CACHE/opa-$OPA_VERSION"

# A bin/ command: the class the Apache Kafka distribution's script of that name runs.
kafka_command() {
    local name="$1" class="$2" log_config="$3"
    cat > "$KAFKA_HOME/bin/$name.tmp" <<SCRIPT
#!/usr/bin/env bash
# $name of Apache Kafka $KAFKA_VERSION, made by scripts/setup-production-stack.sh.
exec java \${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+UseG1GC -Djava.awt.headless=true \\
    -Dlog4j2.configurationFile="$KAFKA_HOME/config/$log_config" \\
    -cp "$KAFKA_HOME/libs/*" $class "\$@"
SCRIPT
    chmod +x "$KAFKA_HOME/bin/$name.tmp"
    mv "$KAFKA_HOME/bin/$name.tmp" "$KAFKA_HOME/bin/$name"
}

if [ ! -f "$KAFKA_HOME/.complete" ]; then
    echo "setup: Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME" >&2
    rm -rf "$KAFKA_HOME"
    mkdir -p "$KAFKA_HOME/bin" "$KAFKA_HOME/config"
    mvn --batch-mode --quiet --file deploy/kafka/pom.xml dependency:copy-dependencies \
        -DoutputDirectory="$KAFKA_HOME/libs" -DincludeScope=runtime >&2
    cat > "$KAFKA_HOME/config/broker-log4j2.properties" <<'PROPERTIES'
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
PROPERTIES
    cat > "$KAFKA_HOME/config/tools-log4j2.properties" <<'PROPERTIES'
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
PROPERTIES
    kafka_command kafka-server-start.sh kafka.Kafka broker-log4j2.properties
    kafka_command kafka-storage.sh kafka.tools.StorageTool tools-log4j2.properties
    kafka_command kafka-topics.sh org.apache.kafka.tools.TopicCommand tools-log4j2.properties
    kafka_command kafka-acls.sh org.apache.kafka.tools.AclCommand tools-log4j2.properties
    kafka_command kafka-configs.sh org.apache.kafka.tools.ConfigCommand tools-log4j2.properties
    touch "$KAFKA_HOME/.complete"
fi

if [ ! -x "$OPA_HOME/opa" ]; then
    echo "setup: the OPA server $OPA_VERSION from its Go module into $OPA_HOME" >&2
    mkdir -p "$OPA_HOME"
    # Outside the repository, so that no go.mod of ours is involved; the build cache is Go's own.
    (cd "$CACHE" && GOBIN="$OPA_HOME" GOFLAGS=-mod=mod go install "github.com/open-policy-agent/opa@$OPA_VERSION") >&2
fi

scripts/setup-slurm.sh

echo "KAFKA_HOME=$KAFKA_HOME"
echo "OPA_BIN=$OPA_HOME/opa"
