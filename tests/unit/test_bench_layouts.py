"""bench/pipeline.py's layouts and the processes it samples for each role (tests/e2e/support.ScaleStack.pids)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import pytest

from bench import pipeline
from bench.pipeline import Layout, trees_of
from tests.e2e.support import ScaleStack


def test_layouts_parse_as_brokers_by_instances() -> None:
    assert [Layout.parse(t) for t in ("1x1", "3X2")] == [Layout(1, 1), Layout(3, 2)]
    assert Layout(3, 2).label == "3 brokers, 2 instances of each service"
    assert Layout(1, 1).label == "1 broker, 1 instance of each service"
    for bad in ("3", "3x", "x2", "0x1", "1x0", "axb", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            Layout.parse(bad)


def _pid_file(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def test_a_role_is_every_instance_and_every_kafka_node(tmp_path: Path) -> None:
    stack = ScaleStack(tmp_path, ports={})
    for label, pid in (("gateway", 10), ("gateway-2", 11), ("gateway-x", 99), ("emca-sim", 20), ("issuer-1", 30),
                       ("issuer-10", 32), ("issuer-2", 31), ("issuer-2x", 98)):
        _pid_file(tmp_path / "run" / f"{label}.pid", pid)
    for node, pid in ((1, 41), (2, 42), (3, 43)):
        _pid_file(tmp_path / "kafka" / f"node-{node}" / "kafka.pid", pid)
    assert stack.pids("gateway") == [10, 11]  # not gateway-x
    assert stack.pids("issuer") == [30, 31, 32]  # by instance number
    assert stack.pids("emca-sim") == [20]
    assert stack.pids("kafka") == [41, 42, 43]
    assert stack.pids("deployer") == []
    single = ScaleStack(tmp_path / "single", ports={})
    _pid_file(tmp_path / "single" / "kafka" / "kafka.pid", 7)
    assert single.pids("kafka") == [7]


def test_the_trees_of_several_instances_count_each_process_once() -> None:
    children = {1: [2, 3], 3: [4], 5: [6]}
    assert sorted(trees_of([1, 5, 3], children)) == [1, 2, 3, 4, 5, 6]


def test_a_terminated_run_stops_its_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A SIGTERM during a run (here: while the stack starts) still runs `certrail down`, and the handler is put
    back afterwards."""
    stopped: list[object] = []

    class Terminated:
        var_dir = tmp_path / "var"

        def up(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(pipeline.tempfile, "mkdtemp", lambda prefix, dir=None: str(tmp_path / "run"))  # noqa: ARG005
    monkeypatch.setattr(pipeline, "make_stack", lambda var_dir, layout, args: Terminated())  # noqa: ARG005
    monkeypatch.setattr(pipeline, "stop_stack", lambda stack, args: stopped.append(stack))  # noqa: ARG005
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited, pipeline.sigterm_as_exit():
        pipeline.run(argparse.Namespace(keep=False, db="sqlite", work_dir=None), Layout(1, 1), naive_too=False)
    assert exited.value.code == 128 + signal.SIGTERM
    assert len(stopped) == 1 and isinstance(stopped[0], Terminated)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_threads_name_and_cpu_ticks_come_from_its_stat_line() -> None:
    # a JVM's C2 compiler thread (the name in parentheses, with a space); utime 1200 and stime 34 ticks
    stat = "4242 (C2 CompilerThre) S 1 4200 4200 0 -1 1077936192 90 0 0 0 1200 34 0 0 20 0 70 0 1234 0 0"
    assert pipeline.thread_ticks(stat) == ("C2 CompilerThre", 1234)
    assert pipeline.thread_ticks("7 (a) b) (c) R 1 2 3 4 5 6 7 8 9 10 5 6 0 0") == ("a) b) (c", 11)
    assert "C2 CompilerThre".startswith(pipeline.JIT_THREADS) and not "data-plane-kafk".startswith(pipeline.JIT_THREADS)


def test_the_jit_cpu_of_processes_without_jit_threads_is_zero() -> None:
    # this test's own Python process has no JVM compiler threads; a pid that is gone counts nothing
    assert pipeline.jit_cpu_seconds([os.getpid(), 2**22 + 12345]) == 0.0


def test_a_processes_user_and_system_ticks_include_its_reaped_childrens(monkeypatch: pytest.MonkeyPatch) -> None:
    # fields from 3 on: utime 1200, stime 34, cutime 7, cstime 5 (fields [11] to [14])
    lines = {101: "S 1 1 1 0 -1 0 0 0 0 0 1200 34 7 5 20 0".split(), 102: "S 1 1 1 0 -1 0 0 0 0 0 10 20 0 1 20 0".split()}
    monkeypatch.setattr(pipeline, "_stat", lines.get)
    assert pipeline.tree_cpu_split([101, 102, 103]) == (1200 + 7 + 10, 34 + 5 + 20 + 1)  # 103 is gone: nothing
    assert pipeline.tree_cpu_seconds([101]) == (1200 + 34 + 7 + 5) / pipeline.CLOCK_TICKS


def test_kernel_time_and_the_jit_are_parts_never_counted_as_other_processes() -> None:
    sampler = pipeline.Sampler({})
    sampler.times = [0.0, 10.0]
    sampler.samples = [
        {"deployer": 0.0, "deployer-kernel": 0.0, "kafka": 0.0, "kafka-jit": 0.0, "bench": 0.0, "machine": 0.0},
        {"deployer": 4.0, "deployer-kernel": 1.5, "kafka": 2.0, "kafka-jit": 1.0, "bench": 0.5, "machine": 7.0},
    ]
    spent = sampler.between(0.0, 10.0)
    # the machine's 7 s less the processes' own 4 + 2 + 0.5: the kernel's 1.5 and the JIT's 1.0 are inside those
    assert spent["other"] == pytest.approx(0.5)
    assert spent["deployer-kernel"] == pytest.approx(1.5)
    assert pipeline.is_part("deployer-kernel") and pipeline.is_part(pipeline.KAFKA_JIT) and not pipeline.is_part("deployer")
