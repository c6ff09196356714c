"""Timing and memory utilities: what one call costs, measured fairly.

* :func:`interleaved` times several contenders round-robin, so that drift on the
  machine (other processes, frequency changes, thermal state) hits all of them
  alike instead of whichever happened to run last.
* :func:`summarize` reduces samples to a median and interquartile range.
* :func:`peak_memory` measures the peak memory that one call allocates on top
  of what was live when it started.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Stats:
    """Median and quartiles of a list of samples, in the samples' unit."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def scaled(self, factor: float) -> Stats:
        return Stats(self.median * factor, self.q1 * factor, self.q3 * factor, self.n)


def summarize(samples: list[float]) -> Stats:
    """Median and quartiles (inclusive method, so two samples are enough)."""
    if len(samples) == 1:
        return Stats(samples[0], samples[0], samples[0], 1)
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Stats(median, q1, q3, len(samples))


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Wall-clock seconds of each contender's call, ``repeats`` samples each.

    Every round calls every contender once, in an order shuffled afresh each round
    (seeded by the round: the same orders every run), so that no contender always
    runs first or right after the same neighbour. A rotating start, used before,
    kept every contender behind the same predecessor: at B=1, T=1000 the
    regularised GRU always followed the reference engine's thousand Python steps,
    whose aftermath cost the next call 1.3 ms (about 20%) wherever it came, and it
    read as the regularisers' overhead. The first ``warmup`` rounds are run and discarded: they absorb
    one-time costs (oneDNN primitive creation, allocator growth, lazy
    compilation). The garbage collector runs once before the first round and
    is off during each call, as in :mod:`timeit`; ``sync`` is called before the
    clock starts and before it stops, so that asynchronous devices are timed
    to completion.
    """
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for round_ in range(warmup + repeats):
        for name in random.Random(round_).sample(names, len(names)):
            fn = contenders[name]
            gc.disable()
            try:
                sync()
                start = time.perf_counter()
                fn()
                sync()
                elapsed = time.perf_counter() - start
            finally:
                gc.enable()
            if round_ >= warmup:
                samples[name].append(elapsed)
    return samples


def cpu_seconds() -> tuple[float, float, float] | None:
    """(wall clock, CPU seconds busy on the whole machine, CPU seconds of this process), or None off Linux.

    Differences between two calls give how many cores *other* processes kept
    busy meanwhile: ``(machine - own) / wall``. The machine's busy time is the
    non-idle time in ``/proc/stat``; this process's is :func:`os.times` (its finished children included).
    """
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest time is already in user
    own = os.times()  # with the children waited for: the fresh processes that ran configs are this run's own work
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def other_cores_busy(start: tuple[float, float, float] | None, end: tuple[float, float, float] | None) -> float | None:
    """Average number of cores that other processes kept busy between two :func:`cpu_seconds` snapshots."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


# -- peak memory ------------------------------------------------------------

# Lines that the profiler's C++ side writes straight to file descriptor 2 on
# every start and stop; they are not about the code being measured.
_PROFILER_NOISE = ("SyncActivityProfilerHandler", "Memory block of unknown size")


@contextlib.contextmanager
def _profiler_stderr_filtered():
    """Route fd 2 to a temporary file and re-emit only lines that are not profiler noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip() and not any(noise in line for noise in _PROFILER_NOISE):
                    print(line, file=sys.stderr)


@dataclass(frozen=True)
class Memory:
    """Peak bytes of one call, by two independent counts (see :func:`peak_memory`)."""

    peak: int
    allocator_peak: int | None  # the allocator's own running total, where the profiler exposes it


def peak_memory(fn: Callable[[], object], device: torch.device) -> Memory:
    """Peak bytes that ``fn()`` allocates above what was live when it started.

    CPU: run ``fn`` once under ``torch.profiler`` with ``profile_memory=True``.
    The profiler records one ``[memory]`` event per allocator call, ``+nbytes``
    for an allocation and ``-nbytes`` for a free. Sorted by time, the running
    sum of these events is the memory allocated since the profiler started
    (whatever thread allocated it), and its maximum is the peak. Memory that
    ``fn`` leaves allocated (for example parameter gradients) counts, as it
    does for the allocator. Frees of blocks allocated before profiling started
    carry no size, so ``fn`` should not free such blocks (zero gradients with
    ``set_to_none=True`` before the call, not inside it).

    Cross-check: with each event the CPU allocator also reports its own
    running total of allocated bytes; its maximum minus its value before the
    first event is ``allocator_peak``, an independent count of the same peak.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the bytes
    allocated before the call.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return Memory(torch.cuda.max_memory_allocated() - before, None)

    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with _profiler_stderr_filtered(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = prof.profiler.kineto_results
    events = sorted((e for e in results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return Memory(peak, _allocator_peak(results))


def _allocator_peak(results) -> int | None:
    """The allocator's reported running total: its maximum minus its value before the first event."""
    try:
        from torch._C._profiler import _EventType

        def walk(nodes):
            for node in nodes:
                yield node
                yield from walk(node.children)

        allocations = [e for e in walk(results.experimental_event_tree()) if e.tag == _EventType.Allocation]
    except (ImportError, AttributeError):  # private API: the cross-check is optional
        return None
    if not allocations:
        return 0
    fields = [e.extra_fields for e in sorted(allocations, key=lambda e: e.start_time_ns)]
    before = fields[0].total_allocated - fields[0].alloc_size
    return max(0, max(f.total_allocated for f in fields) - before)


def check_peak_memory() -> tuple[int, int]:
    """Self-check of :func:`peak_memory` on CPU: ``(expected, measured)`` bytes.

    Allocates 100 MB and 40 MB, frees the first, then allocates 80 MB: the
    true peak is 140 MB (both first blocks live), not 220 MB (the sum) nor
    120 MB (the last moment).
    """
    mb = 1_000_000

    def allocate():
        a = torch.ones(100 * mb // 4)
        b = torch.ones(40 * mb // 4)
        del a
        c = torch.ones(80 * mb // 4)
        del b, c

    return 140 * mb, peak_memory(allocate, torch.device("cpu")).peak
