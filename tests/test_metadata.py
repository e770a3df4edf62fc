"""The on-disk contract's metadata: explicit data class, versioned content, tags."""

from __future__ import annotations

import json

import pytest
from tensorboard.compat.proto import summary_pb2

from tb_bn_plugin import metadata


def test_metadata_content_is_versioned_and_declares_its_data_class():
    md = metadata.create_summary_metadata({"kind": metadata.KIND_LAYER_SUMMARY, "extra": [1, 2]})
    assert md.plugin_data.plugin_name == "bn_internals"
    # The Rust data server drops summaries without an explicit data class.
    assert md.data_class == summary_pb2.DATA_CLASS_TENSOR
    parsed = metadata.parse_plugin_content(md.plugin_data.content)
    assert parsed == {"kind": "layer_summary", "extra": [1, 2], "version": metadata.SCHEMA_VERSION}


def test_every_older_version_still_reads():
    for version in range(1, metadata.SCHEMA_VERSION + 1):
        content = json.dumps({"kind": "gap", "version": version}).encode()
        assert metadata.parse_plugin_content(content)["version"] == version


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps({"kind": "x", "version": 99}).encode(), "upgrade tb_bn_plugin"),
        (b"\xff\x00garbage", "unreadable"),
        (b"{not json", "unreadable"),
        (json.dumps(["kind"]).encode(), "lacks a 'kind'"),
        (json.dumps({"version": 1}).encode(), "lacks a 'kind'"),
        (json.dumps({"kind": "x"}).encode(), "bad version"),
        (json.dumps({"kind": "x", "version": 0}).encode(), "bad version"),
        (json.dumps({"kind": "x", "version": "1"}).encode(), "bad version"),
    ],
)
def test_unusable_content_is_a_metadata_error_naming_the_problem(content, message):
    with pytest.raises(metadata.MetadataError, match=message):
        metadata.parse_plugin_content(content)


def test_tags_keep_layer_paths_whole_and_model_tags_apart():
    assert metadata.layer_tag("block/1/bn", "summary") == "bn_internals/block/1/bn/summary"
    assert metadata.gap_tag() == "bn_internals/_model/gap"
    # Every tag lives under the plugin's prefix, so TensorBoard's other dashboards ignore them.
    assert all(
        tag.startswith(metadata.TAG_PREFIX + "/")
        for tag in (metadata.layer_tag("x", "channels"), metadata.gap_tag())
    )


def test_storage_orders_are_stable():
    """Row and column orders are part of the event format: changing one breaks old logdirs."""
    assert metadata.CHANNEL_STATS == (
        "batch_mean",
        "batch_variance",
        "moving_mean",
        "moving_variance",
        "gamma",
        "beta",
    )
    assert metadata.SUMMARY_COLUMNS == ("mean", "std", "min", "p05", "p50", "p95", "max")
    assert metadata.INFO_FIELDS == ("training", "trainable", "count", "momentum", "full")
    assert metadata.GAP_LAYER_FIELDS == ("compound", "local", "local_derived", "attribution")
    assert metadata.REPLICA_COLUMNS == ("count", "batch_mean", "batch_variance")
