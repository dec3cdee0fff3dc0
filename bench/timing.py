"""Wall-clock timing shared by the benchmark scripts."""

from __future__ import annotations

import time


def alternating(functions: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds per call of each function, after one warm-up call each, the calls alternating (the order reversed
    every round) so that all see the same state of a shared, noisy machine. Returns the times and the warm-up
    calls' results."""
    first = {name: function() for name, function in functions.items()}
    times = {name: [] for name in functions}
    names = list(functions)
    for k in range(repeats):
        for name in names if k % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times, first
