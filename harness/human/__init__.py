"""Human evaluation round trips: blinded rating sheets out, ratings back in, aggregates and Elo.

    harness human export RUN_DIR... --suite e2e --out human/e2e-r1
    harness human import human/e2e-r1/annotator-*.csv --key human/e2e-r1/key.json
    harness human elo judgments.jsonl

sheets.py (the shared format) -> export.py (sheets out) / collect.py (ratings in) -> aggregate.py
(means, agreement, Elo); ratings.py holds the statistics as pure functions. Details: docs/human-eval.md.
"""
