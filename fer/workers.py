"""Work spread over the machine's cores: one process-pool helper for decoding, checking and drawing images."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

CHUNK = 512  # items per task: large enough to amortize the hand-over, small enough for a smooth progress bar
SERIAL_LIMIT = 2000  # below this many items, working in this process beats starting workers


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def map_chunks(
    task: Callable[..., R],
    items: Sequence[T],
    args: tuple[Any, ...] = (),
    *,
    workers: int | None = None,
    chunk: int = CHUNK,
    serial_limit: int = SERIAL_LIMIT,
    desc: str | None = None,
    unit: str = "img",
    progress: bool = True,
) -> list[tuple[int, R]]:
    """``task(items[start:start + chunk], start, *args)`` for every chunk, in forked worker processes when
    there are many items and cores (else in this process); returns ``(start, result)`` in item order.

    Fork, where the platform has it: workers inherit the imported modules instead of importing torch again.
    """
    workers = workers or available_cores()
    chunks = [(start, items[start : start + chunk]) for start in range(0, len(items), chunk)]
    results: dict[int, R] = {}
    with tqdm(total=len(items), desc=desc, unit=unit, disable=None if progress else True, leave=False) as bar:
        if workers < 2 or len(items) < serial_limit:
            for start, part in chunks:
                results[start] = task(part, start, *args)
                bar.update(len(part))
        else:
            fork = "fork" in multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork") if fork else None
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {
                    pool.submit(task, part, start, *args): (start, len(part)) for start, part in chunks
                }
                for future in as_completed(futures):
                    start, count = futures[future]
                    results[start] = future.result()
                    bar.update(count)
    return [(start, results[start]) for start, _ in chunks]
