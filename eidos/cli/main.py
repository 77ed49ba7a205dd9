"""eidos: train text-to-image models on a small budget (MaskDiT + FACM)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from eidos import __version__
from eidos.cli import data, evaluate, export, sample, serve, train
from eidos.cli.allocator import keep_freed_memory_for_reuse

COMMANDS = {"train": train, "sample": sample, "eval": evaluate, "export": export, "data": data, "serve": serve}
DEBUG_HELP = "on an error, print the full traceback (also EIDOS_DEBUG=1)"
# What a user can cause (a bad path, value, file or permission): one line and exit status 2, no traceback.
USER_ERRORS = (ValueError, OSError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eidos", description=__doc__)
    parser.add_argument("--version", action="version", version=f"eidos {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(sub)
        add_debug_flag(sub)
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """--debug after the command too (and after `data ACTION`); SUPPRESS keeps `eidos --debug train` working."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for nested in subcommands(parser).values():
        add_debug_flag(nested)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; a command taking dotted overrides accepts its options anywhere among them
    (`eidos train data.source=cache --max-steps 100 train.seed=1`)."""
    args, _ = parser.parse_known_args(argv)  # only to learn the command; errors come from the parse below
    command = subcommands(parser).get(args.command)
    if command is None or not any(a.dest == "overrides" for a in command._actions):
        return parser.parse_args(argv)
    position = argv.index(args.command)
    parsed = command.parse_intermixed_args(argv[position + 1:])
    parsed.command, parsed.debug = args.command, getattr(args, "debug", False) or getattr(parsed, "debug", False)
    return parsed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parse(parser, argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(__name__).info("malloc: %s", keep_freed_memory_for_reuse())
    debug = getattr(args, "debug", False) or os.environ.get("EIDOS_DEBUG", "") not in ("", "0")
    try:
        return COMMANDS[args.command].run(args)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"eidos {args.command}: error: {one_line(error)} (--debug for the traceback)", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """An exception as one line; an OSError as its reason and the path it concerns."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
        return f"{error.strerror}: {paths}"
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}" if isinstance(error, ImportError) else text


if __name__ == "__main__":
    sys.exit(main())
