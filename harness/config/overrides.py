"""Command-line overrides that Hydra would accept but a single run cannot mean: a sweep, or one key set twice.

    harness train method=lora,qlora          # exit 2: a sweep; the message shows the sweep spec to write
    harness train train.lr=1 train.lr=2      # exit 2: train.lr set twice
    harness train method.target_modules=[q_proj,v_proj] data.prompt_template='a, b'   # fine: a list, a quoted string

Overrides are read with Hydra's own override parser, so commas inside brackets, braces or quotes are values,
and only a top-level comma list (or range(...), interval(...), glob(...)) is a sweep. Called by the commands
(train, validate, eval, sweep) on what the user typed, before composing; overrides the harness assembles itself
(a sweep's trials, a run directory's recorded overrides) are merged by key and never checked here.
"""
from __future__ import annotations

import shlex

import yaml

from harness.config.schema import ConfigError


def _spec_example(sweeps: list, command: str, rest: list[str]) -> list[str]:
    """A sweep spec with the command line's grid, three lines (four for `harness eval`), and its command."""
    grid = {o.key_or_group: list(o.sweep_iterator()) for o in sweeps}
    lines = ["study: my-sweep", *(["command: eval"] if command == "eval" else []),
             "grid: " + yaml.safe_dump(grid, default_flow_style=True, width=10_000).strip()]
    if command == "eval":  # no training, so no validation loss: a metric of the eval suites
        lines.append("objectives: [{metric: wikitext2.word_perplexity, direction: minimize}]  # one your suites report")
    else:
        lines.append("objectives: [{metric: summary.best_val_loss, direction: minimize}]")
    run = " ".join(["harness sweep sweeps/my-sweep.yaml", *map(shlex.quote, rest)])
    return [f"    {line}" for line in lines] + ["  and run it (the other overrides apply to every trial):", f"    {run}"]


def check_command_line(overrides: list[str], command: str = "train") -> None:
    """Raise ConfigError for sweep syntax or a key set more than once in `overrides` (all such problems at once).
    Overrides Hydra cannot parse are left to composition, which reports them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for ov in overrides:
        try:
            parsed.append((ov, parser.parse_override(ov)))
        except Exception:  # noqa: BLE001 - a syntax error: compose() reports it with Hydra's message
            continue
    errors: list[str] = []
    seen: dict[tuple, list[str]] = {}
    for ov, o in parsed:
        seen.setdefault((o.key_or_group, o.package), []).append(ov)
    for (key, _), given in seen.items():
        if len(given) > 1:
            errors.append(f"{key} is set {len(given)} times ({' '.join(given)}): keep one.")
    sweeps = [o for _, o in parsed if o.is_sweep_override()]
    if not sweeps:
        if errors:
            raise ConfigError(errors)
        return
    names = " ".join(o.input_line for o in sweeps)
    finite = all(o.value_type.name in ("SIMPLE_CHOICE_SWEEP", "CHOICE_SWEEP", "RANGE_SWEEP") for o in sweeps)
    if command == "sweep":
        grid = ", ".join(f"{o.key_or_group}: [{', '.join(map(str, o.sweep_iterator()))}]" if finite else o.key_or_group
                         for o in sweeps)
        errors.append(f"{names}: a list of values to sweep over; on `harness sweep` an override pins one value. "
                      f"Put the values in the spec's grid ({grid}).")
    elif not finite:
        errors.append(f"{names}: a Hydra sweep; `harness {command}` runs one configuration. Write a sweep spec with a "
                      "`search:` dimension instead (docs/sweeps.md) and run it with `harness sweep`.")
    else:
        rest = [ov for ov, o in parsed if not o.is_sweep_override()]
        errors.append("\n".join([
            f"{names}: a list of values to sweep over (Hydra's multirun syntax); `harness {command}` runs one "
            "configuration. Write a sweep spec, e.g. sweeps/my-sweep.yaml:",
            *_spec_example(sweeps, command, rest),
            "  (a value that is itself a list is written key=[a,b]; a string with a comma is quoted: key='a,b')",
        ]))
    raise ConfigError(errors)
