"""harness: an experiment-tracking benchmark harness for fine-tuning language models.

Data flow: conf/ is composed into a RunConfig (harness.config), a sweep expands it into trials
(harness.sweep), each trial trains (harness.train), evaluates (harness.evaluate) and writes a
self-describing run directory (harness.records); reports are built only from run directories
(harness.report). Entry point: the `harness` command (harness.cli).
"""

__version__ = "0.1.0"
