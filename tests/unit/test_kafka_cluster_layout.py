"""The local cluster's layout and CLI decisions that need no running JVM (the cluster itself:
tests/integration/test_kafka_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.kafka_cmd import app
from services.common.kafka_cluster import LAYOUT_FILE, LocalKafkaCluster, NodePorts, strided_ports
from services.common.kafka_local import LocalKafka, LocalKafkaError


def test_the_cli_layout_steps_every_listener_by_two() -> None:
    assert strided_ports(3, 9092, 9093, None) == [
        NodePorts(9092, 9093), NodePorts(9094, 9095), NodePorts(9096, 9097),
    ]  # fmt: skip
    assert [p.sasl_ssl_port for p in strided_ports(3, 9092, 9093, 9192)] == [9192, 9194, 9196]


@pytest.mark.parametrize(
    ("brokers", "ports", "message"),
    [
        pytest.param(1, [NodePorts(9092, 9093)], "at least 2 brokers", id="one-node"),
        pytest.param(3, [NodePorts(9092, 9093)] * 2, "one NodePorts each", id="too-few-ports"),
        pytest.param(2, [NodePorts(9092, 9093), NodePorts(9093, 9095)], "must all differ", id="clash"),
        pytest.param(2, [NodePorts(1, 2, 3), NodePorts(4, 5)], "every node has a SASL_SSL", id="mixed-tls"),
    ],
)
def test_impossible_layouts_are_refused(tmp_path: Path, brokers: int, ports: list[NodePorts], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalKafkaCluster(cache_dir=tmp_path, data_dir=tmp_path / "c", brokers=brokers, ports=ports)


def test_nodes_share_secrets_but_not_data(tmp_path: Path) -> None:
    cluster = LocalKafkaCluster(cache_dir=tmp_path, data_dir=tmp_path / "c", ports=strided_ports(3, 19092, 19093, 19192))
    assert [n.node_id for n in cluster.nodes] == [1, 2, 3]
    assert len({n.data_dir for n in cluster.nodes}) == 3
    assert {n.principals_file for n in cluster.nodes} == {tmp_path / "c" / "principals.json"}
    assert {n.ssl_cafile for n in cluster.nodes} == {tmp_path / "c" / "tls" / "ca.pem"}
    assert {n.cluster_id for n in cluster.nodes} == {cluster.cluster_id}
    assert cluster.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert cluster.sasl_ssl_bootstrap_servers == "127.0.0.1:19192,127.0.0.1:19194,127.0.0.1:19196"


def test_a_node_must_be_one_of_its_quorum_voters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must name node 2"):
        LocalKafka(cache_dir=tmp_path, data_dir=tmp_path, node_id=2, controller_port=9095, quorum_voters={1: 9093})


def test_a_single_brokers_data_dir_is_never_turned_into_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "kraft").mkdir()  # what a single broker's data dir holds
    cluster = LocalKafkaCluster(cache_dir=tmp_path, data_dir=tmp_path, ports=strided_ports(3, 19092, 19093, None))
    with pytest.raises(LocalKafkaError, match="single broker's data"):
        cluster.start(wait_timeout=5)
    assert not (tmp_path / LAYOUT_FILE).exists()
    assert not any(n.data_dir.exists() for n in cluster.nodes)


def _stored_cluster(data_dir: Path) -> None:
    data_dir.mkdir()
    nodes = [{"port": 19092 + 2 * i, "controller_port": 19093 + 2 * i, "sasl_ssl_port": None} for i in range(3)]
    layout = {"cluster_id": "AAAAAAAAAAAAAAAAAAAAAQ", "host": "127.0.0.1", "authentication": True, "nodes": nodes}
    (data_dir / LAYOUT_FILE).write_text(json.dumps(layout))


def test_status_and_stop_find_the_cluster_through_its_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    _stored_cluster(data_dir)
    runner = CliRunner()

    status = runner.invoke(app, ["status", "--data-dir", str(data_dir)])
    assert status.exit_code == 3, status.output
    assert "Kafka cluster (3 nodes) is stopped" in status.output

    stop = runner.invoke(app, ["stop", "--data-dir", str(data_dir)])
    assert stop.exit_code == 0, stop.output
    assert "0 of 3 nodes were running" in stop.output


def test_start_refuses_a_single_broker_in_a_clusters_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka"
    _stored_cluster(data_dir)
    result = CliRunner().invoke(app, ["start", "--brokers", "1", "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert "holds a 3-node cluster" in result.output
    assert not (data_dir / "kraft").exists()
