"""harness: an experiment-tracking benchmark harness for fine-tuning language models.

Data flow: conf/ is composed into a RunConfig (harness.config), a sweep expands it into trials
(harness.sweep), each trial runs harness.pipeline: it trains (harness.train), evaluates (harness.eval)
and writes a self-describing run directory (harness.run); reports are built only from run directories
(harness.report). Entry point: the `harness` command (harness.cli -> harness.commands).
Layout and import rules: docs/architecture.md.
"""

__version__ = "0.1.0"
