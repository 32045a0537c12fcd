"""The ``pathsegdiff`` command line.

Every module in this package that defines ``register(subparsers)`` adds one subcommand; the
subparser it makes sets ``func`` (a callable taking the parsed arguments and returning an exit
status). Modules keep heavy imports (torch, diffusers) inside their functions so that
``pathsegdiff --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit status 2."""


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` for a subcommand's ``--threads`` (nothing when ``None``)."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads must be 1 or more, got {threads}.")
    import torch

    torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of this package."""
    parser = argparse.ArgumentParser(
        prog="pathsegdiff",
        description="Segment H&E histopathology with latent diffusion features.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pathsegdiff`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, ValueError) as exc:
        print(f"pathsegdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pathsegdiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
