"""The ``tb-bn`` command line: one subcommand per module that defines ``add_parser``.

Each command module exposes ``add_parser(subparsers) -> argparse.ArgumentParser``
and sets ``func=callable(args) -> int`` as the parser default. Errors meant for
the user are raised as ``CommandError`` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Optional

from tb_bn_plugin.cli import graph, report
from tb_bn_plugin.cli.errors import CommandError

# Modules that contribute a subcommand, in the order shown by --help.
COMMAND_MODULES = (report, graph)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tb-bn",
        description="Inspect BatchNorm internals logged by tb_bn_plugin.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (when installed) without its C++ start-up lines on stderr.

    TensorBoard's readers import TensorFlow when it is installed, and its
    runtime prints oneDNN and CUDA-probing lines while its shared libraries
    load, before absl logging is initialised: no environment variable
    (``TF_CPP_MIN_LOG_LEVEL`` included) silences them. So the import runs with
    file descriptor 2 pointed at a temporary file, which is replayed only if
    the import fails. Later warnings and errors reach stderr as usual.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    import_tensorflow_quietly()
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        print(f"tb-bn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tb-bn: interrupted", file=sys.stderr)
        return 130
