"""The command layer: one module per `harness` subcommand (harness/cli.py dispatches to them).

Each module defines add_arguments(parser) and run(args) -> exit code. Only this layer parses arguments,
prints for the user and turns the stages' typed errors (ConfigError, DataError, EvalError, SpecError,
ReportError, HumanEvalError) into a message and an exit code; the stages below never call sys.exit.
"""
