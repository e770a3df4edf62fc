"""Which BN Internals tags a run has: ``TagInfo`` (a tag and its metadata) and ``list_tags``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from typing import Any, Optional

from tensorboard.data import provider as tb_provider

from tb_bn_plugin import metadata
from tb_bn_plugin.reading.provider import ExperimentSource
from tb_bn_plugin.series import LayerConfig


@dataclasses.dataclass
class TagInfo:
    """A BN Internals tag, its decoded metadata content and its latest step."""

    tag: str
    content: dict[str, Any]
    max_step: Optional[int] = None

    @property
    def kind(self) -> str:
        return self.content["kind"]

    @functools.cached_property
    def layer(self) -> Optional[LayerConfig]:
        layer = self.content.get("layer")
        return LayerConfig.from_json(layer) if isinstance(layer, dict) else None


# Layers of a model share their tags' metadata across runs (and reloads): each distinct
# content is parsed once. The parsed dicts are shared: readers must not modify them.
_parsed_content = functools.lru_cache(maxsize=1 << 14)(metadata.parse_plugin_content)


def list_tags(
    source: ExperimentSource,
    runs: Optional[Iterable[str]] = None,
    tags: Optional[Iterable[str]] = None,
) -> tuple[dict[str, list[TagInfo]], dict[str, list[str]]]:
    """BN Internals tags (all, or only ``tags``) per run; per run, errors of unreadable metadata."""
    listing = source.provider.list_tensors(
        source.ctx,
        experiment_id=source.experiment_id,
        plugin_name=metadata.PLUGIN_NAME,
        run_tag_filter=tb_provider.RunTagFilter(runs=runs, tags=tags),
    )
    found: dict[str, list[TagInfo]] = {}
    errors: dict[str, list[str]] = {}
    for run, by_tag in listing.items():
        for tag, series in sorted(by_tag.items()):
            try:
                content = _parsed_content(series.plugin_content)
            except metadata.MetadataError as err:
                errors.setdefault(run, []).append(f"tag {tag!r}: {err}")
                continue
            found.setdefault(run, []).append(TagInfo(tag, content, series.max_step))
    return found, errors
