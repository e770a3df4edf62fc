"""Which logged BatchNorm layer a graph site belongs to: ``site_layers``.

A site is named by the op scope the layer ran under in the traced graph, not
by the layer's path as the callback logs it: TensorFlow makes name scopes
unique per graph, so ResNet50's ``conv1_bn`` runs under
``resnet50_1/conv1_bn_1`` (the model's own scope first, ``_<n>`` appended to
each segment), and in a ``Sequential`` the layer ``batch_normalization`` may
run under ``batch_normalization_1`` while the layer ``batch_normalization_1``
runs under ``batch_normalization_1_2``. Names alone are therefore ambiguous;
the site's moving-statistic variables (``variables/<Keras variable path>``
in a graph from ``trace_model_graph``) say which layer owns them, but Keras
variable paths leave out the sub-models a functional layer was built outside
of (``encoder/bn`` owns ``bn/moving_mean``).

A layer is the site's when its path matches the tail of the site's scope,
segment by segment, each scope segment read with or without its ``_<n>``
suffixes, and when its path and the owner of the site's moving variables
(if any) are one the tail of the other. The longest such path wins (a scope
``outer_1/encoder_1/bn_1`` is the layer ``encoder/bn``, not a top-level
``bn``), then the one read with the most segments as written (a JAX or
PyTorch site is named by its layer path: ``bn_1`` is ``bn_1``, not ``bn``);
a remaining tie leaves the site unmapped rather than guessing. Pure string
work over the site names and the run's logged layer paths.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

from tb_bn_plugin.graph.model import BNSite

# The suffix TensorFlow appends to make a name scope unique in its graph.
_UNIQUIFIER = re.compile(r"_\d+$")
# Where ``trace_model_graph`` names a captured variable: ``variables/<variable path>``,
# with ``_`` appended while the name is taken.
_VARIABLE_PREFIX = "variables/"


def site_layers(sites: Sequence[BNSite], layer_paths: Iterable[str]) -> dict[str, str]:
    """The logged layer path of each site that has exactly one, by site name."""
    by_last: dict[str, list[list[str]]] = collections.defaultdict(list)
    for path in dict.fromkeys(layer_paths):
        segments = path.split("/")
        by_last[segments[-1]].append(segments)
    found = {}
    for site in sites:
        layer = _layer_of_site(site, by_last)
        if layer is not None:
            found[site.name] = layer
    return found


def _layer_of_site(site: BNSite, by_last: dict[str, list[list[str]]]) -> str | None:
    scope = [_readings(segment) for segment in site.name.split("/")]
    owners = [_variable_owner(name) for name in site.moving_variables]
    owners = [owner for owner in owners if owner]
    matches = [
        segments
        for last in scope[-1]
        for segments in by_last.get(last, ())
        if _tail_matches(segments, scope)
        and (not owners or any(_one_ends_the_other(segments, owner) for owner in owners))
    ]
    if not matches:
        return None
    names = site.name.split("/")
    rank = {"/".join(segments): _rank(segments, names) for segments in matches}
    top = max(rank.values())
    best = [path for path, score in rank.items() if score == top]
    return best[0] if len(best) == 1 else None


def _rank(segments: list[str], names: list[str]) -> tuple[int, int]:
    """Longer paths first, then those read with fewer ``_<n>`` suffixes taken off."""
    tail = names[len(names) - len(segments) :]
    return len(segments), sum(a == b for a, b in zip(segments, tail, strict=True))


def _readings(segment: str) -> set[str]:
    """A scope segment and what it reads as without each trailing ``_<n>`` (``bn_1_1``: 3)."""
    readings = {segment}
    while _UNIQUIFIER.search(segment):
        segment = _UNIQUIFIER.sub("", segment)
        if segment:
            readings.add(segment)
    return readings


def _tail_matches(segments: list[str], scope: list[set[str]]) -> bool:
    """Whether ``segments`` read as the last segments of ``scope``."""
    if len(segments) > len(scope):
        return False
    tail = scope[len(scope) - len(segments) :]
    return all(segment in readings for segment, readings in zip(segments, tail, strict=True))


def _variable_owner(name: str) -> list[str] | None:
    """The scope owning a traced moving variable (``variables/sequential/bn/moving_mean_``)."""
    if not name.startswith(_VARIABLE_PREFIX):
        return None
    segments = name[len(_VARIABLE_PREFIX) :].split("/")
    return segments[:-1] or None


def _one_ends_the_other(path: list[str], owner: list[str]) -> bool:
    shorter, longer = sorted((path, owner), key=len)
    return longer[len(longer) - len(shorter) :] == shorter
