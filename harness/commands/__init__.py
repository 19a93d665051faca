"""The command layer: one module per `harness` subcommand (harness/cli.py dispatches to them).

Each module defines add_arguments(parser) and run(args) -> exit code. Only this layer parses arguments,
prints for the user and turns the stages' typed errors (ConfigError, DataError, EvalError, SpecError,
ReportError, HumanEvalError) into a message and an exit code; the stages below never call sys.exit.
"""

# subcommand -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "validate": ("harness.commands.validate", "check a config (overrides) without training; non-zero exit on errors"),
    "train": ("harness.commands.train", "train one run: harness train model=... method=... data=... [key=value ...]"),
    "eval": ("harness.commands.eval", "evaluate a run directory or a base model: harness eval RUN_DIR [eval=...]"),
    "sweep": ("harness.commands.sweep", "run (or resume) a study from sweeps/NAME.yaml"),
    "status": ("harness.commands.status", "list the trials of a study"),
    "report": ("harness.commands.report", "write reports/<study>/ from run records"),
    "human": ("harness.commands.human", "human evaluation: export sheets, import ratings, Elo rankings"),
    "judge": ("harness.commands.judge", "a local model judges two runs' generations (both orders) into judgments JSONL"),
    "completion": ("harness.commands.completion", "print a shell completion script: eval \"$(harness completion bash)\""),
}
