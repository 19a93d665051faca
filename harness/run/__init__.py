"""The run record: the only contract between stages (docs/run-record.md).

record.py (run directories, statuses, exit codes, readers and the eval.json writer), environment.py
(versions, git, CPU, memory), tracking.py (W&B, MLflow, TensorBoard at the edge). Imported by every stage; imports only
harness.config, harness.paths and harness.atomic.
"""
