"""The `harness` command: one subcommand per stage, each in harness/commands/<name>.py.

    harness validate [overrides]            config check only (harness.config)
    harness train [overrides]               one run (harness.pipeline: fit, then evaluate)
    harness eval RUN_DIR|overrides          evaluation suites (harness.eval)
    harness sweep sweeps/NAME.yaml          an Optuna study (harness.sweep)
    harness status STUDY                    the trials of a study (harness.sweep storage)
    harness report STUDY|RUN_DIR...         reports/<study>/ (harness.report)
    harness human export|import|elo ...     human-evaluation round trips (harness.human)
    harness judge RUN_A RUN_B               a local model judges two runs' generations (harness.eval.judge)
    harness completion bash|zsh             a shell completion script (subcommands, options, config groups)
    harness --version

Heavy libraries are imported inside the stages, so `harness validate` stays fast. The table of subcommands is
harness/commands/__init__.py COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from harness import __version__, quiet
from harness.commands import COMMANDS


MODEL_COMMANDS = ("train", "eval", "judge")  # the ones that run a model: one run per process


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or only == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command is None:
        parser = build_parser(only="")  # names only: --help, or an error naming the valid commands
        parser.parse_args(argv)
        parser.print_help()
        return 2
    quiet.install()  # library warnings that ask nothing of the user (harness/quiet.py)
    if command in MODEL_COMMANDS:
        from harness.run import memory

        memory.keep_freed_memory()  # freed blocks reused, not faulted in again (harness/run/memory.py)
    module = importlib.import_module(COMMANDS[command][0])
    # one subcommand's own parser, so that options and Hydra overrides may come in any order
    parser = argparse.ArgumentParser(prog=f"harness {command}", description=COMMANDS[command][1])
    module.add_arguments(parser)
    try:
        args = parser.parse_intermixed_args(argv[1:])
    except TypeError:  # a command with sub-commands of its own (harness human ...)
        args = parser.parse_args(argv[1:])
    args.command = command
    try:
        rc = int(module.run(args) or 0)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # the reader went away (`harness status | head`): nothing left to say to it, and no traceback.
        # stdout points at /dev/null from here on so that the interpreter's own final flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
