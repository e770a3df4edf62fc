"""The ``tb-bn`` command line: one subcommand per module that defines ``add_parser``.

Each command module exposes ``add_parser(subparsers) -> argparse.ArgumentParser``
and sets ``func=callable(args) -> int`` as the parser default. Errors meant for
the user are raised as ``CommandError`` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import sys
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
