#!/usr/bin/env bash
# Starts one broker of docker-compose.yml (apache/kafka image) with the same security as
# certrail's embedded broker (services/common/kafka_local.py; docs/decisions/0012):
#   - clients and inter-broker traffic: SASL_PLAINTEXT with SCRAM-SHA-512 on :9092
#     (put the cluster on a private network, or use SASL_SSL across hosts: docs/operations.md)
#   - the KRaft controllers: SASL_PLAINTEXT with PLAIN on :9093 (KRaft controllers take no SCRAM)
#   - the StandardAuthorizer, nothing allowed without an ACL, super users broker and admin
#   - one SCRAM user per principal, created when the storage is formatted (first start only)
# The ACLs themselves are applied by the `migrate` service (`certrail kafka acls apply`).
# The replication settings are those of the tested local cluster (CLUSTER_BROKER_CONFIG in
# services/common/kafka_cluster.py; tests/unit/test_compose_matches_tested.py compares them).
set -euo pipefail
for name in KAFKA_NODE_ID CLUSTER_ID KAFKA_CONTROLLER_QUORUM_VOTERS KAFKA_ADVERTISED_LISTENERS KAFKA_BROKER_PASSWORD \
            KAFKA_ADMIN_PASSWORD KAFKA_GATEWAY_PASSWORD KAFKA_ISSUER_PASSWORD KAFKA_DEPLOYER_PASSWORD \
            KAFKA_AUDITOR_PASSWORD KAFKA_REQUESTER_PASSWORD; do
  if [[ -z "${!name:-}" ]]; then echo "start-broker.sh: $name is not set" >&2; exit 2; fi
done
umask 077
conf=/opt/kafka/config/certrail-server.properties
client=/opt/kafka/config/certrail-broker-client.properties
scram=org.apache.kafka.common.security.scram.ScramLoginModule
plain=org.apache.kafka.common.security.plain.PlainLoginModule
cat > "$conf" <<PROPS
process.roles=broker,controller
node.id=${KAFKA_NODE_ID}
controller.quorum.voters=${KAFKA_CONTROLLER_QUORUM_VOTERS}
controller.listener.names=CONTROLLER
listeners=SASL_PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=${KAFKA_ADVERTISED_LISTENERS}
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=${scram} required username="broker" password="${KAFKA_BROKER_PASSWORD}";
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=${plain} required username="broker" password="${KAFKA_BROKER_PASSWORD}" user_broker="${KAFKA_BROKER_PASSWORD}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:broker;User:admin
allow.everyone.if.no.acl.found=false
log.dirs=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
min.insync.replicas=2
default.replication.factor=3
unclean.leader.election.enable=false
auto.create.topics.enable=false
PROPS
cat > "$client" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=${scram} required username="broker" password="${KAFKA_BROKER_PASSWORD}";
PROPS
users=()
for principal in broker admin gateway issuer deployer auditor requester; do
  var="KAFKA_${principal^^}_PASSWORD"
  users+=(--add-scram "SCRAM-SHA-512=[name=${principal},password=${!var}]")
done
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$CLUSTER_ID" -c "$conf" "${users[@]}" >/dev/null
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
