"""``reading.event_files``: truncated, corrupt and unreadable event files found, healthy ones pass.

Event files are written by TensorBoard's own ``EventFileWriter`` and by a
``tf.summary`` writer, then cut or damaged byte by byte.
"""

from __future__ import annotations

import os
import struct

import pytest

from tb_bn_plugin.reading import event_files
from tb_bn_plugin.reading.event_files import BadFile, check_event_file, check_event_files


def _write_events(run_dir: str, n: int = 5) -> str:
    """An events file of ``n`` events (plus the file-version header) in ``run_dir``; its path."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(run_dir)
    for step in range(n):
        writer.add_event(event_pb2.Event(step=step, wall_time=1.0 + step))
    writer.close()
    (name,) = os.listdir(run_dir)
    return os.path.join(run_dir, name)


def _frames(content: bytes) -> list[bytes]:
    """The TFRecord frames of an events file: length (8), its CRC (4), data, data CRC (4)."""
    frames, pos = [], 0
    while pos < len(content):
        (length,) = struct.unpack("<Q", content[pos : pos + 8])
        frames.append(content[pos : pos + 16 + length])
        pos += 16 + length
    return frames


@pytest.fixture
def healthy(tmp_path):
    """(events file path, its frames)."""
    path = _write_events(str(tmp_path / "healthy"))
    with open(path, "rb") as f:
        return path, _frames(f.read())


def _copy(tmp_path, content: bytes, name: str = "events.out.tfevents.1.test") -> str:
    path = tmp_path / "damaged" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return str(path)


def test_healthy_files_pass(tmp_path, healthy):
    import tensorflow as tf

    path, frames = healthy
    assert len(frames) == 6  # the file-version event and 5 written ones
    assert check_event_file(path) is None
    with tf.summary.create_file_writer(str(tmp_path / "tf_summary")).as_default():
        tf.summary.scalar("loss", 0.5, step=1)
        tf.summary.flush()
    empty = tmp_path / "empty" / "events.out.tfevents.0.empty"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    assert check_event_files(str(tmp_path)) == []


@pytest.mark.parametrize("cut", [1, 8, 11, 12, 13, -1])
def test_a_file_cut_inside_a_record_is_truncated_at_that_record(tmp_path, healthy, cut):
    """Inside the header (TensorFlow's reader takes that for the end of the file) or the data."""
    _, frames = healthy
    offset = sum(len(f) for f in frames[:3])
    path = _copy(tmp_path, b"".join(frames[:3]) + frames[3][:cut])
    bad = check_event_file(path, "damaged")
    assert (bad.kind, bad.records_read, bad.offset, bad.run) == ("truncated", 3, offset, "damaged")
    assert f"truncated record at {offset}" in bad.detail
    assert bad.describe().startswith(f"{path}: truncated at byte {offset} after 3 readable records")


@pytest.mark.parametrize("where", ["length", "length_crc", "data", "data_crc"])
def test_a_damaged_record_is_corrupt_at_that_record(tmp_path, healthy, where):
    """The offset is the record's for a bad length, its data's (12 bytes on) for bad data."""
    _, frames = healthy
    start = sum(len(f) for f in frames[:2])
    record = bytearray(frames[2])
    record[{"length": 2, "length_crc": 9, "data": 13, "data_crc": len(record) - 1}[where]] ^= 0xFF
    path = _copy(tmp_path, b"".join(frames[:2]) + bytes(record) + b"".join(frames[3:]))
    bad = check_event_file(path)
    offset = start if where.startswith("length") else start + 12
    assert (bad.kind, bad.records_read, bad.offset) == ("corrupt", 2, offset)
    assert f"record at {offset}" in bad.detail


def test_a_file_that_is_not_tfrecords_is_corrupt_at_byte_0(tmp_path):
    path = _copy(tmp_path, b"this is not a TFRecord file " * 10)
    bad = check_event_file(path)
    assert (bad.kind, bad.records_read, bad.offset) == ("corrupt", 0, 0)
    # Shorter than a record header: indistinguishable from a cut one.
    short = check_event_file(_copy(tmp_path, b"garbage", "events.out.tfevents.2.short"))
    assert (short.kind, short.records_read, short.offset) == ("truncated", 0, 0)


def test_a_vanished_file_is_unreadable(tmp_path):
    path = str(tmp_path / "events.out.tfevents.1.gone")
    bad = check_event_file(path, "r")
    assert (bad.kind, bad.records_read, bad.offset, bad.run) == ("unreadable", 0, None, "r")
    assert bad.detail


def test_check_event_files_names_runs_and_keeps_path_order(tmp_path, healthy):
    _, frames = healthy
    logdir = tmp_path / "logdir"
    for run, content in (
        ("b/deep", b"".join(frames[:-1]) + frames[-1][:4]),
        (".", b"not a TFRecord file"),
        ("a", b"".join(frames)),
    ):
        run_dir = logdir / run
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "events.out.tfevents.1.host").write_bytes(content)
    (logdir / "a" / "not_an_event_file").write_bytes(b"garbage")
    found = check_event_files(str(logdir))
    assert [(b.run, b.kind) for b in found] == [("b/deep", "truncated"), (".", "corrupt")]
    assert [b.path for b in found] == sorted(b.path for b in found)
    assert list(event_files.event_files(str(logdir))) == sorted(
        str(logdir / run / "events.out.tfevents.1.host") for run in ("b/deep", ".", "a")
    )


def test_bad_file_json_and_offset_parsing():
    bad = BadFile("p", ".", "corrupt", 2, 116, "corrupted record at 116")
    assert bad.to_json() == {
        "path": "p",
        "run": ".",
        "kind": "corrupt",
        "records_read": 2,
        "offset": 116,
        "detail": "corrupted record at 116",
    }
    assert BadFile(**bad.to_json()) == bad
    assert event_files._offset("truncated record at 145' failed") == 145
    assert event_files._offset("no offset here") is None
    assert event_files.run_name("/l", "/l/events.out.tfevents.1") == "."
    assert event_files.run_name("/l", "/l/a/b/events.out.tfevents.1") == "a/b"
