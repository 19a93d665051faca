"""Evaluation stage: suites run on a model in memory, each recorded into the run's eval.json.

registry.py (SUITE_KINDS, EvalError, config hashes), suites.py (run_suites), val.py, perplexity.py,
lm_eval.py (lm-evaluation-harness tasks, task YAMLs in tasks/), generation.py (decoding + metrics),
metrics.py (the metric registry with each metric's direction, scale and per-item key), scores.py and
nlgmetrics.py (the scoring functions), contamination.py (each suite's items against the run's training data).
Never imports harness.train.
"""
