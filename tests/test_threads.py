"""The thread-count choice for a shared CPU (fapn_hf.inference.threads): the arithmetic on given loads, the reading
of the kernel's counters (this process's own work excluded), and the settings as the commands take them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fapn_hf.inference.threads import (
    IDLE_NOISE,
    CpuTimes,
    LoadMonitor,
    ThreadGovernor,
    choose_num_threads,
    parse_threads,
    read_cpu_times,
    usable_cores,
)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


@pytest.mark.parametrize(
    ("usable", "busy", "reserved", "expected"),
    [
        (2, 0.0, 0, 2),  # a quiet machine: every core, as PyTorch's default
        (2, IDLE_NOISE, 0, 2),  # housekeeping noise is no busy core
        (2, 0.6, 0, 1),  # most of a core busy elsewhere: leave it
        (2, 1.0, 0, 1),
        (2, 2.0, 0, 1),  # never fewer than one thread
        (16, 3.1, 0, 13),  # 0.1 of a core is noise
        (16, 3.3, 0, 12),  # 3.3 cores of work take 4 cores
        (16, 0.0, 2, 14),  # the process's own helpers
        (4, 0.0, 9, 1),
    ],
)
def test_the_choice_leaves_busy_and_reserved_cores_alone(usable, busy, reserved, expected):
    assert choose_num_threads(reserved, usable=usable, busy=busy) == expected


def _monitor(readings, machine_cores=4, usable=4):
    readings = iter(readings)
    return LoadMonitor(lambda: next(readings), machine_cores=machine_cores, usable=usable)


def test_the_monitor_counts_the_other_processes_work_between_readings():
    # 4 CPUs; between readings 400 ticks pass, 250 of them busy, 100 of those this process's: 1.5 cores elsewhere.
    monitor = _monitor([CpuTimes(1000, 4000, 50), CpuTimes(1250, 4400, 150), CpuTimes(1250, 4800, 150)])
    assert monitor.busy_cores() is None  # no earlier reading: no verdict yet, and no waiting
    assert monitor.busy_cores() == pytest.approx(1.5)
    assert monitor.busy_cores() == 0.0  # then a quiet interval
    # Readings 20 ticks apart over 4 CPUs are too close: the earlier one is kept until enough time has passed.
    close = _monitor([CpuTimes(0, 0, 0), CpuTimes(10, 20, 0), CpuTimes(400, 800, 0)])
    assert close.busy_cores() is None and close.busy_cores() is None
    assert close.busy_cores() == pytest.approx(2.0)
    assert _monitor([None]).busy_cores() == 0.0  # no counters: nothing known to be busy


def test_a_verdict_that_cannot_wait_watches_the_machine_once(monkeypatch):
    monkeypatch.setattr("fapn_hf.inference.threads.FIRST_INTERVAL_S", 0.0)
    monitor = _monitor([CpuTimes(0, 0, 0), CpuTimes(300, 400, 100)])
    assert monitor.busy_cores(wait=True) == pytest.approx(2.0)


def test_counters_over_more_cpus_than_the_process_may_use_are_not_trusted():
    # A container limited to 2 of a host's 64 CPUs: the host's counters count other tenants' cores.
    monitor = _monitor([CpuTimes(0, 0, 0), CpuTimes(6000, 6400, 0)], machine_cores=64, usable=2)
    assert not monitor.trusted and monitor.busy_cores() == 0.0


def test_the_counters_of_this_machine_are_read():
    times = read_cpu_times()
    assert times is not None and 0 <= times.machine_busy <= times.machine_total and times.own >= 0
    assert 1 <= usable_cores() <= 4096
    assert LoadMonitor().busy_cores(wait=True) >= 0.0


@pytest.mark.parametrize("value", ["0", -1, "two", 1.5, "", True])
def test_a_thread_count_must_be_positive_or_auto(value):
    with pytest.raises(ValueError, match=r"threads must be a positive number or 'auto'"):
        parse_threads(value)


def test_the_governor_applies_a_count_follows_the_load_or_leaves_torch_alone(monkeypatch):
    monkeypatch.setattr("fapn_hf.inference.threads.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        assert ThreadGovernor(1).update() == 1 == torch.get_num_threads()
        assert ThreadGovernor(None).update() == 1  # left as it is
        torch.set_num_threads(2)
        # Auto on 2 cores: no verdict yet (kept), a busy core elsewhere -> 1 thread, then a quiet interval -> 2.
        readings = [CpuTimes(0, 0, 0), CpuTimes(100, 200, 0), CpuTimes(100, 400, 0)]
        governor = ThreadGovernor("auto", monitor=_monitor(readings, machine_cores=2, usable=2))
        assert governor.update() == 2
        assert governor.update() == 1
        assert governor.update() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_steps_down_from_the_users_count_and_restores_it(monkeypatch):
    monkeypatch.setattr("fapn_hf.inference.threads.usable_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # the user's choice on an 8-core machine: auto never goes above it
        quiet = [CpuTimes(0, 0, 0), CpuTimes(0, 800, 0)]
        governor = ThreadGovernor("auto", monitor=_monitor(quiet, machine_cores=8, usable=8))
        governor.monitor.busy_cores()  # the first reading
        assert governor.choose() == 3
        busy = [CpuTimes(0, 0, 0), CpuTimes(700, 800, 0)]  # 7 of 8 cores busy elsewhere
        governor = ThreadGovernor("auto", monitor=_monitor(busy, machine_cores=8, usable=8))
        governor.monitor.busy_cores()
        with governor.applied() as count:
            assert count == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 3  # restored after the block
    finally:
        torch.set_num_threads(before)


def test_training_and_the_predictors_take_the_setting(tmp_path):
    from types import SimpleNamespace

    from fapn_hf.inference.threads import cpu_thread_governor
    from fapn_hf.training.args import parse_arguments
    from fapn_hf.training.trainer import ThreadSetter

    before = torch.get_num_threads()
    try:
        setter = ThreadSetter(1, every=2)
        args = SimpleNamespace(use_cpu=True)
        torch.set_num_threads(2)
        setter.on_train_begin(args, None, None)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        setter.on_step_begin(args, SimpleNamespace(global_step=3), None)  # not a checking step
        assert torch.get_num_threads() == 2
        setter.on_step_begin(args, SimpleNamespace(global_step=4), None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert cpu_thread_governor(torch.device("meta"), 3).setting is None  # not the CPU: PyTorch's count left alone
    with pytest.raises(ValueError, match=r"threads must be a positive number or 'auto', got 'zero'"):
        parse_arguments(["--threads", "zero", "--output_dir", str(tmp_path)], recipe=RECIPE)


def _spin(seconds: float) -> None:
    import time

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_live_childs_work_is_this_processs_own():
    """Data-loader workers are this process's children: their CPU time counts as its own, not as another process
    holding a core (a worker busy feeding the model must not make training step down to one thread)."""
    import multiprocessing
    import os

    before = read_cpu_times()
    child = multiprocessing.get_context("fork").Process(target=_spin, args=(1.0,))
    child.start()
    child.join(timeout=0.8)  # measured while it still runs: a live child
    during = read_cpu_times()
    child.join()
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    assert during.own - before.own >= 0.1 * ticks_per_second  # at least 0.1 s of the child's work, even on a busy CI
