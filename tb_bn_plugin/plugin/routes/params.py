"""Request parameters of the routes: parsing and checking, with TensorBoard's errors.

A missing or malformed parameter raises ``errors.InvalidArgumentError`` (400);
a ``run`` the data provider does not list raises ``errors.NotFoundError`` (404).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

from tensorboard import errors
from werkzeug.datastructures import MultiDict

from tb_bn_plugin.reading.provider import ExperimentSource


def required(args: Mapping[str, str], name: str) -> str:
    """The non-empty string parameter ``name``."""
    value = args.get(name)
    if not value:
        raise errors.InvalidArgumentError(f"missing parameter {name!r}")
    return value


def required_list(args: MultiDict, name: str) -> list[str]:
    """Every value of the repeated parameter ``name`` (``?run=a&run=b``), none of them empty."""
    values = args.getlist(name)
    if not values:
        raise errors.InvalidArgumentError(f"missing parameter {name!r}")
    if not all(values):
        raise errors.InvalidArgumentError(f"parameter {name!r} must not be empty")
    return values


def int_param(
    args: Mapping[str, str],
    name: str,
    default: Optional[int],
    minimum: int,
    maximum: Optional[int] = None,
) -> Optional[int]:
    """The integer parameter ``name`` within [minimum, maximum], or ``default`` when absent."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise errors.InvalidArgumentError(
            f"parameter {name!r} must be an integer, got {raw!r}"
        ) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise errors.InvalidArgumentError(f"parameter {name!r} must be {bound}, got {value}")
    return value


def check_run(source: ExperimentSource, run: str) -> None:
    """Raise ``errors.NotFoundError`` unless the data provider lists ``run``."""
    runs = source.provider.list_runs(source.ctx, experiment_id=source.experiment_id)
    if run not in {r.run_name for r in runs}:
        raise errors.NotFoundError(f"unknown run {run!r}")
