"""`harness completion bash|zsh`: print a shell completion script for `harness`.

    eval "$(harness completion bash)"     # in ~/.bashrc
    eval "$(harness completion zsh)"      # in ~/.zshrc, after compinit

The script asks `harness completion --complete=LINE` (LINE: the command line up to the cursor) for the candidates,
so completion always matches the installed code and configs: subcommands, each command's --options, config
groups and their options (`model=` -> `model=smollm2-135m`, with the folders of HARNESS_CONFIG_PATH and of
--config-dir on the line), config keys (`train.` -> `train.lr=`), enumerated and true/false values, shipped sweep
specs and the studies under the harness root. complete(line) is the whole logic and is tested directly; it imports
no ML library, and a command's module only to list that command's --options. Nothing offered: the shell completes
file names.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shlex
import sys
import typing
from pathlib import Path

from harness import paths
from harness.commands import COMMANDS

OVERRIDE_COMMANDS = ("train", "validate", "eval", "sweep")

BASH = r"""# bash completion for harness: eval "$(harness completion bash)"
_harness_complete() {
    local IFS=$'\n'
    COMPREPLY=($(COMP_WORDBREAKS="$COMP_WORDBREAKS" harness completion --shell bash --complete="${COMP_LINE:0:COMP_POINT}" 2>/dev/null))
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./] ]]; then compopt -o nospace; fi
}
complete -o default -F _harness_complete harness
"""

ZSH = r"""# zsh completion for harness: eval "$(harness completion zsh)" (after compinit)
_harness() {
    local -a found spaced unspaced
    local c
    found=("${(@f)$(harness completion --shell zsh --complete="$LBUFFER" 2>/dev/null)}")
    for c in $found; do
        [[ -z $c ]] && continue
        if [[ $c == *[=./] ]]; then unspaced+=("$c"); else spaced+=("$c"); fi
    done
    (( $#spaced )) && compadd -- $spaced
    (( $#unspaced )) && compadd -S '' -- $unspaced
    (( $#spaced + $#unspaced )) || _files
}
compdef _harness harness
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", nargs="?", choices=("bash", "zsh"), help="the shell to print the script for")
    p.add_argument("--complete", default=None, metavar="LINE", help=argparse.SUPPRESS)
    p.add_argument("--shell", dest="for_shell", default="", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    if args.complete is not None:
        found = complete(args.complete)
        if args.for_shell == "bash":  # bash replaces only the text after its last word-break character (= and :)
            found = bash_words(found, _split(args.complete)[1], os.environ.get("COMP_WORDBREAKS", "\"'><=;|&(:"))
        print("\n".join(found))
        return 0
    if not args.shell:
        print("harness completion: name a shell: bash or zsh (eval \"$(harness completion bash)\")", file=sys.stderr)
        return 2
    print(BASH if args.shell == "bash" else ZSH, end="")
    return 0


def bash_words(found: list[str], current: str, wordbreaks: str) -> list[str]:
    """The candidates as bash wants them: without the part of the current word up to its last word break."""
    cut = max((current.rfind(c) for c in set(wordbreaks) - {'"', "'"}), default=-1) + 1
    return [f[cut:] for f in found]


def _split(line: str) -> tuple[list[str], str]:
    """(the finished words, the word being completed) of a command line up to the cursor."""
    for tail in ("", '"', "'"):  # an open quote in the word being completed
        try:
            words = shlex.split(line + tail)
            break
        except ValueError:
            continue
    else:
        words = line.split()
    if not line or line[-1].isspace():
        return words, ""
    return words[:-1], (words[-1] if words else "")


def complete(line: str) -> list[str]:
    """Completions of the last word of `line` (a `harness ...` command line up to the cursor), whole words."""
    words, cur = _split(line)
    args = words[1:]
    if not args:
        return _match(["--help", "--version"] if cur.startswith("-") else list(COMMANDS), cur)
    command = args[0]
    if command not in COMMANDS:
        return []
    options = any(a.startswith("-") for a in args[1:]) or cur.startswith("-")
    parser = _parser(command) if options else None  # imported only when options are on the line
    if cur.startswith("-"):
        return _match([s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings
                       if s.startswith("--")], cur)
    action = _takes_value(parser, args[-1]) if len(args) > 1 else None
    if action is not None:  # the value of an option: its choices, else a path (the shell's file completion)
        return _match([str(c) for c in action.choices or []], cur)
    positional = [w for i, w in enumerate(args[1:], 1) if not w.startswith("-") and _takes_value(parser, args[i - 1]) is None]
    env = _line_env(args)
    if command == "completion":
        return _match(["bash", "zsh"], cur)
    if command == "human" and not positional:
        return _match(["export", "import", "elo"], cur)
    if command in ("status", "report") and not positional and "/" not in cur:
        root = Path(env["HARNESS_ROOT"]).expanduser().resolve() if "HARNESS_ROOT" in env else paths.root()
        return _match(sorted(p.stem for p in (root / "studies").glob("*.db")), cur)
    if command == "sweep" and not positional:
        return [] if "/" in cur else _match(sorted(p.stem for p in paths.shipped("sweeps").glob("*.yaml")), cur)
    if command in OVERRIDE_COMMANDS and not (command == "eval" and "/" in cur and "=" not in cur):
        return _match(override_candidates(cur, env.get("HARNESS_CONFIG_PATH")), cur)
    return []


def _parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"harness {command}")
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return parser


def _takes_value(parser: argparse.ArgumentParser | None, word: str) -> argparse.Action | None:
    """The option `word` names, if it takes a value (--root DIR); None for flags, other words, or no parser."""
    if parser is None or not word.startswith("-") or "=" in word:
        return None
    action = next((a for a in parser._actions if word in a.option_strings), None)
    return action if action is not None and action.nargs != 0 else None


def _line_env(args: list[str]) -> dict[str, str]:
    """HARNESS_ROOT and HARNESS_CONFIG_PATH as the command on the line would see them (--root, --config-dir)."""
    env = {k: os.environ[k] for k in ("HARNESS_ROOT", "HARNESS_CONFIG_PATH") if os.environ.get(k)}

    def given(option: str) -> list[str]:
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a == option] + \
            [a.split("=", 1)[1] for a in args if a.startswith(option + "=")]

    dirs = [str(Path(d).expanduser().resolve()) for d in given("--config-dir")]
    if dirs:
        env["HARNESS_CONFIG_PATH"] = os.pathsep.join([*dirs, env.get("HARNESS_CONFIG_PATH", "")]).rstrip(os.pathsep)
    if given("--root"):
        env["HARNESS_ROOT"] = given("--root")[-1]
    return env


def override_candidates(cur: str, config_path: str | None = None) -> list[str]:
    """Hydra overrides: `model=` -> the group's options; `train.` -> its keys; `train.precision=` -> its values."""
    from harness.config.schema import ALLOWED, GROUPS, RunConfig

    sign = cur[: len(cur) - len(cur.lstrip("+~"))]
    key, eq, _ = cur[len(sign):].partition("=")
    groups = (*GROUPS, "experiment")
    if eq and key in groups:
        return [f"{sign}{key}={o}" for o in _group_options(key, config_path)]
    schema, parts = RunConfig, key.split(".")
    for part in parts[:-1]:  # walk to the dataclass that holds the last part
        schema = _fields(schema).get(part)
        if schema is None:
            return []
    fields = _fields(schema)
    prefix = sign + "".join(f"{p}." for p in parts[:-1])
    if eq:
        kind = fields.get(parts[-1])
        values = ALLOWED.get(key) or (("true", "false") if kind is bool else ())
        return [f"{sign}{key}={v}" for v in values]
    out = [f"{prefix}{g}=" for g in groups] if len(parts) == 1 else []
    for name, kind in fields.items():
        out.append(f"{prefix}{name}." if dataclasses.is_dataclass(kind) else f"{prefix}{name}=")
    return sorted(set(out))


def _group_options(group: str, config_path: str | None) -> list[str]:
    from harness.config import search

    saved = os.environ.get("HARNESS_CONFIG_PATH")
    try:
        if config_path is not None:
            os.environ["HARNESS_CONFIG_PATH"] = config_path
        return search.group_options(group)
    finally:
        if saved is None:
            os.environ.pop("HARNESS_CONFIG_PATH", None)
        else:
            os.environ["HARNESS_CONFIG_PATH"] = saved


def _fields(schema) -> dict[str, typing.Any]:
    """A dataclass's field name -> its type (Optional[X] read as X); {} for anything else."""
    if not dataclasses.is_dataclass(schema):
        return {}
    out = {}
    for name, kind in typing.get_type_hints(schema).items():
        if typing.get_origin(kind) is typing.Union:
            kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        out[name] = kind
    return out


def _match(candidates: list[str], cur: str) -> list[str]:
    return [c for c in candidates if c.startswith(cur)]
