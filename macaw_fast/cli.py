"""The `macaw-fast` command line. Parses arguments and calls into the package; no logic here.

Each sub-command lives with the code it drives and registers itself through a
``register(subparsers)`` function listed in ``_COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that provide ``register(subparsers)``; each adds its sub-command(s).
_COMMAND_MODULES = [
    "macaw_fast.demo",
    "macaw_fast.data.cli",
    "macaw_fast.train.cli",
    "macaw_fast.collect.cli",
]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that never accepts an abbreviated option (``--lr`` is not ``--lrlr``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(prog="macaw-fast", description="Fast, exact MACAW offline meta-RL.")
    parser.add_argument("--version", action="version", version=f"macaw-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


#: Optional packages and the extra that installs each (pyproject.toml).
EXTRAS = {"gymnasium": "envs", "mujoco": "envs", "matplotlib": "log", "tensorboard": "log", "minari": "minari",
          "h5py": "hdf5", "rliable": "results", "arch": "results", "triton": "triton"}


def missing_package_message(e: ModuleNotFoundError) -> str:
    """'this needs the <package> package: pip install 'macaw-fast[<extra>]'' for an optional package."""
    top = (e.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return str(e)
    return f"this needs the optional package {top!r}, which is not installed: pip install 'macaw-fast[{extra}]'"


def main(argv: list[str] | None = None) -> int:
    from ._malloc import tune_malloc
    from ._procs import die_with_parent_if_asked

    die_with_parent_if_asked()   # a child of `train --seeds` or `reproduce --jobs`
    tune_malloc()   # long-running commands: keep freed tensor memory in the process
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from ._provenance import set_command

    set_command(["macaw-fast", *args.argv])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        print(f"macaw-fast {args.command}: error: {missing_package_message(e)}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, FloatingPointError, ImportError) as e:
        print(f"macaw-fast {args.command}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:    # read-only or full disk, permissions: name the file, no traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"macaw-fast {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
