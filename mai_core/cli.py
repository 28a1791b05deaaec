"""Command-line entry point: ``python -m mai_core <command> ...``.

Each command lives in ``mai_core/commands/<name>.py`` and defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Command modules keep their top-level
imports light so that ``--help`` is instant; heavy imports happen inside ``run``.

Options must be spelled in full (no parser accepts abbreviations such as ``--ou`` for ``--out``). A
command that writes an ``--out`` declares ``OUTPUT = "<kind>"``; it then gets the one ``--force`` flag,
and refuses an existing target that holds no output of that kind without it (``mai_core.io``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mai_core import __version__
from mai_core.errors import MaiError

import mai_core.commands as _commands_pkg

# Order in which commands are listed by --help (others follow alphabetically).
_ORDER = [
    "demo", "import_slide", "validate", "genes", "augment_score", "train", "predict",
    "evaluate", "ensemble", "gradcam", "jobs",
]


def _command_modules():
    names = [m.name for m in pkgutil.iter_modules(_commands_pkg.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return [importlib.import_module(f"mai_core.commands.{n}") for n in names]


class Parser(argparse.ArgumentParser):
    """An argparse parser that never expands abbreviated options; its sub-parsers are of the same kind."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)


def add_force(p: argparse.ArgumentParser, what: str) -> None:
    """The one ``--force`` flag of commands that write an output (see ``mai_core.io.check_replaceable``)."""
    p.add_argument("--force", action="store_true",
                   help=f"replace an existing --out even when it does not hold a {what} (deliberate overwrite)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m mai_core",
        description="Predict spatial gene expression from H&E patches; explore genes, "
        "augmentations, training runs and per-gene Grad-CAM.",
    )
    parser.add_argument("--version", action="version", version=f"mai_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        if getattr(mod, "OUTPUT", None):
            add_force(p, mod.OUTPUT)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MaiError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # missing file, no permission, full disk, a file where a folder is expected...
        from mai_core.io import shown_path

        where = getattr(exc, "filename2", None) or exc.filename
        print(f"error: {exc.strerror or exc}" + (f": {shown_path(where)}" if where else ""), file=sys.stderr)
        return 2
