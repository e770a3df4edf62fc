"""``SeriesCache``: parsed ``LayerSeries`` kept between requests, never stale after a reload."""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable, Iterable
from typing import Optional

from tb_bn_plugin.reading.tags import TagInfo
from tb_bn_plugin.series import LayerSeries


class SeriesCache:
    """A thread-safe LRU of parsed ``LayerSeries``, bounded by their array bytes.

    ``load_runs`` keys entries with ``cache_key``: the run, the layer's tags with
    their max_step and the downsampling, so data that changed on a reload is
    never served from it. Cached series are shared: callers must not modify them.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[Hashable, tuple[LayerSeries, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[LayerSeries]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

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
        if series.calls is not None:
            arrays += [series.calls.count, series.calls.mean, series.calls.variance]
        size = sum(a.nbytes for a in arrays)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (series, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                self._bytes -= self._entries.popitem(last=False)[1][1]


def cache_key(run: str, tags: Iterable[TagInfo], sampling: tuple[int, int]) -> Hashable:
    """A layer's key: run, (summary, snapshot) sampling, its tags and their max_step."""
    return run, sampling, tuple(sorted((i.tag, i.max_step) for i in tags))
