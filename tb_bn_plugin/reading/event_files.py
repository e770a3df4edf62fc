"""Find corrupt or truncated TensorBoard event files under a log directory.

TensorBoard's loaders log and skip what they cannot read (a truncated last
record, a record whose CRC does not match, a file that is not a TFRecord file
at all), so a report built on them silently shows less data. ``check_event_files``
reads every ``events.out.tfevents*`` file record by record, verifying the
TFRecord length and data checksums and that the last record ends the file (a
partial record header, which TensorFlow's reader takes for the end of the file,
is a truncation too), and returns the files it could not read to the end, so
that ``tb-bn report`` can name them next to what was readable (the plugin does
not check: its runs show what TensorBoard's loaders read).

A file that is still being written may end in a partial record and is then
reported as truncated; check again after the writer has flushed or closed it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Optional

EVENT_FILE_MARKER = "tfevents"
# Bytes a TFRecord adds around its data: length (8), length CRC (4), data CRC (4).
RECORD_FRAMING_BYTES = 16

# Kinds of problems.
TRUNCATED = "truncated"  # ends in the middle of a record
CORRUPT = "corrupt"  # a length or data checksum does not match, or not a TFRecord file
UNREADABLE = "unreadable"  # an OS error (permissions, vanished file)


@dataclasses.dataclass(frozen=True)
class BadFile:
    """An event file that could not be read to its end.

    Attributes:
      path: the file's path (as found under the log directory).
      run: the run it belongs to: its directory relative to the log directory
        ("." for the log directory itself), as TensorBoard names runs.
      kind: ``"truncated"``, ``"corrupt"`` or ``"unreadable"``.
      records_read: how many records were read intact before the problem
        (TensorBoard shows the data of those).
      offset: byte offset where the reader found the problem, where known, else None:
        the bad record's start (a bad length or a truncation), or its data's, 12
        bytes on (data that does not match its checksum).
      detail: the reader's error message.
    """

    path: str
    run: str
    kind: str
    records_read: int
    offset: Optional[int]
    detail: str

    def describe(self) -> str:
        """One line naming the file and what is wrong with it."""
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return (
            f"{self.path}: {self.kind}{where} after {self.records_read} readable records "
            f"(run {self.run!r}; data after that point is ignored)"
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def event_files(logdir: str) -> Iterator[str]:
    """Every event file under ``logdir`` (recursively), sorted by path."""
    found = []
    for directory, _subdirs, files in os.walk(logdir):
        for name in files:
            if EVENT_FILE_MARKER in name and name.startswith("events.out."):
                found.append(os.path.join(directory, name))
    return iter(sorted(found))


def run_name(logdir: str, path: str) -> str:
    """The TensorBoard run name of an event file: its directory relative to ``logdir``."""
    relative = os.path.relpath(os.path.dirname(path), logdir)
    return relative.replace(os.sep, "/") if relative != "." else "."


def check_event_file(path: str, run: str = ".") -> Optional[BadFile]:
    """A ``BadFile`` when ``path`` cannot be read record by record to its end, else None."""
    import tensorflow as tf  # local: importing the module stays cheap
    from tensorflow.python.util import deprecation

    count = 0
    end = 0  # byte offset just past the last whole record
    try:
        with deprecation.silence():  # tf_record_iterator is deprecated, but reads record by record
            for record in tf.compat.v1.io.tf_record_iterator(path):
                count += 1
                end += len(record) + RECORD_FRAMING_BYTES
        size = os.path.getsize(path)
    except tf.errors.DataLossError as err:
        message = str(err.message if hasattr(err, "message") else err)
        kind = TRUNCATED if "truncated" in message.lower() else CORRUPT
        return BadFile(path, run, kind, count, _offset(message), message)
    except (tf.errors.NotFoundError, tf.errors.PermissionDeniedError, OSError) as err:
        return BadFile(path, run, UNREADABLE, count, None, str(getattr(err, "message", err)))
    if size > end:  # TensorFlow's reader takes a partial record header for the end of the file
        detail = f"truncated record at {end}: {size - end} bytes, less than a record header"
        return BadFile(path, run, TRUNCATED, count, end, detail)
    return None


def check_event_files(logdir: str) -> list[BadFile]:
    """Every event file under ``logdir`` that cannot be read to its end, in path order."""
    bad = []
    for path in event_files(logdir):
        problem = check_event_file(path, run_name(logdir, path))
        if problem is not None:
            bad.append(problem)
    return bad


def _offset(message: str) -> Optional[int]:
    """The byte offset in TensorFlow's "... record at N" messages."""
    marker = "record at "
    start = message.find(marker)
    if start < 0:
        return None
    digits = ""
    for char in message[start + len(marker) :]:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else None
