"""`eidos` console script: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse

from eidos import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eidos", description=__doc__)
    parser.add_argument("--version", action="version", version=f"eidos {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0
