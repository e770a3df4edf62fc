"""``SeriesCache``: parsed ``LayerSeries`` and results computed from them, kept between requests,
never stale after a reload.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Optional, TypeVar

from tb_bn_plugin.reading.tags import TagInfo
from tb_bn_plugin.series import LayerSeries

T = TypeVar("T")
# What a result of ``computed`` counts for against ``max_bytes`` (JSON-sized, small).
RESULT_BYTES = 64 << 10


class SeriesCache:
    """A thread-safe LRU of parsed ``LayerSeries`` and computed results, bounded by bytes.

    ``load_runs`` keys series with ``cache_key``: the run, the layer's tags with
    their max_step and the downsampling, so data that changed on a reload is
    never served from it. ``computed`` keeps results (a run's findings, its
    overview rows) under keys that hold the ``RunData.version`` they were
    computed from. Cached values are shared: callers must not modify them.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[Hashable, tuple[Any, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[Any]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def computed(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``'s result under ``key``: computed on a miss, then kept like a series."""
        hit = self.get(key)
        if hit is not None:
            return hit
        result = compute()
        self.put_result(key, result)
        return result

    def put_result(self, key: Hashable, result: Any) -> None:
        """Keep a computed result (counted as ``RESULT_BYTES``)."""
        self._insert(key, result, RESULT_BYTES)

    def put(self, key: Hashable, series: LayerSeries) -> None:
        arrays = [
            series.steps,
            series.channel_steps,
            *series.info.values(),
            *series.summary.values(),
            *series.channels.values(),
        ]
        if series.replicas is not None:
            arrays += [series.replicas.count, series.replicas.mean, series.replicas.variance]
        self._insert(key, series, sum(a.nbytes for a in arrays))

    def _insert(self, key: Hashable, value: Any, size: int) -> None:
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._bytes -= self._entries.popitem(last=False)[1][1]


def cache_key(run: str, tags: Iterable[TagInfo], sampling: tuple[int, int]) -> Hashable:
    """A layer's key: run, (summary, snapshot) sampling, its tags and their max_step."""
    return run, sampling, tuple(sorted((i.tag, i.max_step) for i in tags))
