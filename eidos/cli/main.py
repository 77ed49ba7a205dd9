"""eidos: train text-to-image models on a small budget (MaskDiT + FACM)."""

from __future__ import annotations

import argparse
import logging
import sys

from eidos import __version__
from eidos.cli import data, evaluate, export, sample, train

COMMANDS = {"train": train, "sample": sample, "eval": evaluate, "export": export, "data": data}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eidos", description=__doc__)
    parser.add_argument("--version", action="version", version=f"eidos {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command].run(args)
    except (ValueError, FileNotFoundError) as error:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"eidos {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
