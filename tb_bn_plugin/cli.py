"""The ``tb-bn`` command line: one subcommand per module that defines ``add_parser``.

Each command module exposes ``add_parser(subparsers) -> argparse.ArgumentParser``
and sets ``func=callable(args) -> int`` as the parser default. Errors meant for
the user are raised as ``CommandError`` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

# Keep TensorFlow's start-up chatter out of the command's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Modules that contribute a subcommand, in the order shown by --help.
COMMAND_MODULES = (
    "tb_bn_plugin.report_cli",
    "tb_bn_plugin.graph_cli",
)


class CommandError(Exception):
    """A user-facing error: printed as ``tb-bn: error: <message>``, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tb-bn",
        description="Inspect BatchNorm internals logged by tb_bn_plugin.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as err:
        print(f"tb-bn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tb-bn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
