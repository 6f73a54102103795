"""How many threads PyTorch should use on a CPU that other processes may share.

PyTorch starts one intra-op thread per core. When another process keeps some of those cores busy (a data-loader
worker, a second model, the other users of a shared machine), each parallel region waits for its slowest thread,
and that thread waits for its core: on 2 cores with one busy process, the deformable convolution's forward ran 4.6x a
dense convolution with 2 threads and 2x faster with 1 (issue 22). Fewer threads than free cores costs far less than
more threads than free cores, so the choice here leaves the busy cores alone: the usable cores minus the cores other
processes keep busy minus `reserved`, at least 1.

`LoadMonitor` measures the other processes' work from Linux's counters (`/proc/stat` for the machine, minus
`/proc/self/stat` for this process) between two readings, so a predictor or a training loop re-reads it between
calls at no cost and follows the load as it changes. Where the counters cannot be read, or cover more CPUs than
this process may use (a container's quota or a CPU affinity: the machine's counters then count other tenants' cores
too), it reports nothing busy, and the choice is every usable core: PyTorch's own default.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

# Below this fraction of a core of measured work, a core counts as free (the kernel's own housekeeping, a shell).
IDLE_NOISE = 0.25
# A reading needs this many clock ticks per CPU since the previous one (10 ms each at Linux's usual 100 Hz).
MIN_INTERVAL_TICKS = 10
# A reading that must give a verdict without an earlier one watches the machine for this long.
FIRST_INTERVAL_S = 0.2


class CpuTimes(NamedTuple):
    """Clock ticks since boot: the machine's busy and total time over all its CPUs, and the CPU time of this process
    and its live children."""

    machine_busy: int
    machine_total: int
    own: int


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _process_ticks(stat_file: Path) -> int:
    """utime + stime of a process from its `stat` file (the command name, field 2, may hold spaces and brackets)."""
    fields = stat_file.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _children_ticks() -> int:
    """CPU ticks of this process's live children (its data-loader workers): their work is this process's own."""
    ticks = 0
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                ticks += _process_ticks(Path("/proc") / pid / "stat")
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    return ticks


def read_cpu_times() -> CpuTimes | None:
    """The counters from `/proc/stat` and `/proc/self/stat` (plus this process's live children, such as data-loader
    workers), or None where there are none (not Linux)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        own_ticks = _process_ticks(Path("/proc/self/stat")) + _children_ticks()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user time
    return CpuTimes(total - idle, total, own_ticks)


class LoadMonitor:
    """The cores' worth of work that other processes did since the previous reading (`busy_cores`).

    Args:
        read_times: the counters (`read_cpu_times`; tests pass their own).
        machine_cores: CPUs the machine's counters cover (default `os.cpu_count()`).
    """

    def __init__(
        self,
        read_times: Callable[[], CpuTimes | None] = read_cpu_times,
        machine_cores: int | None = None,
        usable: int | None = None,
    ):
        self._read = read_times
        self.machine_cores = machine_cores or os.cpu_count() or 1
        # Counters over more CPUs than this process may use say nothing about its own cores.
        self.trusted = self.machine_cores <= (usable_cores() if usable is None else usable)
        self._last: CpuTimes | None = None

    def busy_cores(self, wait: bool = False) -> float | None:
        """Other processes' work since the previous reading, in cores; 0.0 where the counters cannot be read or are
        not this process's cores. None when too little time has passed for a verdict (the first call, or calls less
        than `MIN_INTERVAL_TICKS` apart: the reading is kept for the next call); `wait=True` then watches the machine
        for `FIRST_INTERVAL_S` seconds instead."""
        if not self.trusted:
            return 0.0
        now = self._read()
        if now is None:
            return 0.0
        before = self._last
        if before is None or now.machine_total - before.machine_total < MIN_INTERVAL_TICKS * self.machine_cores:
            if not wait:
                self._last = before or now
                return None
            time.sleep(FIRST_INTERVAL_S)
            before, now = before or now, self._read()
            if now is None:
                return 0.0
        self._last = now
        if now.machine_total <= before.machine_total:
            return 0.0
        others = (now.machine_busy - before.machine_busy) - (now.own - before.own)
        return max(0.0, self.machine_cores * others / (now.machine_total - before.machine_total))


def choose_num_threads(reserved: int = 0, usable: int | None = None, busy: float | None = None) -> int:
    """The intra-op threads for this process: the usable cores minus those other processes keep busy (a core counts
    from `IDLE_NOISE` of a core of work on) minus `reserved` (cores this process's own helpers will occupy), at least
    1. `usable` and `busy` default to `usable_cores()` and a fresh `LoadMonitor`'s reading."""
    usable = usable_cores() if usable is None else usable
    busy = LoadMonitor().busy_cores(wait=True) if busy is None else busy
    taken = math.ceil(busy - IDLE_NOISE) if busy > IDLE_NOISE else 0
    return max(1, min(usable, usable - taken - max(0, reserved)))


def parse_threads(value: str | int | None) -> int | str | None:
    """A `--threads` value: a positive count, `"auto"` (follow the load), or None (PyTorch's default)."""
    if value is None or value == "auto":
        return value
    try:
        count = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        count = None
    if count is None or count < 1:
        raise ValueError(f"threads must be a positive number or 'auto', got {value!r}")
    return count


class ThreadGovernor:
    """Keeps PyTorch's intra-op thread count at a setting while this package computes: a fixed count, or `"auto"`,
    re-chosen from the load (`LoadMonitor`) each time it is applied, e.g. for each prediction or every few training
    steps. `"auto"` never goes above the count in force when the governor was made (the user's
    `torch.set_num_threads`, or PyTorch's one per core): it only steps down while other processes hold cores.

    Args:
        threads: a positive count, `"auto"`, or None (leave PyTorch's setting alone).
        reserved: cores kept free for this process's own helpers (auto only).
    """

    def __init__(self, threads: str | int | None = "auto", reserved: int = 0, monitor: LoadMonitor | None = None):
        self.setting = parse_threads(threads)
        self.reserved = reserved
        self.ceiling = torch.get_num_threads()
        self.monitor = monitor or LoadMonitor()
        self._count: int | None = None  # the last auto choice: kept while the monitor has no new verdict

    def choose(self) -> int | None:
        """The count to use now (None: leave PyTorch's)."""
        if self.setting != "auto":
            return self.setting
        busy = self.monitor.busy_cores()
        if busy is not None:
            self._count = choose_num_threads(self.reserved, usable=min(usable_cores(), self.ceiling), busy=busy)
        return self._count

    def update(self) -> int:
        """Applies the setting now and leaves it in force; returns the thread count."""
        count = self.choose()
        if count is not None and count != torch.get_num_threads():
            torch.set_num_threads(count)
        return torch.get_num_threads()

    @contextmanager
    def applied(self) -> Iterator[int]:
        """The setting in force for a `with` block (yields the count); PyTorch's count is restored after it."""
        before = torch.get_num_threads()
        count = self.update()
        try:
            yield count
        finally:
            if count != before:
                torch.set_num_threads(before)


def cpu_thread_governor(device: torch.device, threads: str | int | None) -> ThreadGovernor:
    """A `ThreadGovernor` for a model on `device`: `threads` on the CPU, none (PyTorch's count left alone) elsewhere."""
    return ThreadGovernor(threads if device.type == "cpu" else None)


__all__ = [
    "CpuTimes",
    "LoadMonitor",
    "ThreadGovernor",
    "choose_num_threads",
    "cpu_thread_governor",
    "parse_threads",
    "read_cpu_times",
    "usable_cores",
]
