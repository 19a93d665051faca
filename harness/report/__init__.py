"""Report stage: what won, by how much, at what cost, and how sure we are, from run records only.

    harness report STUDY [--runs-root runs] [--storage URL] [--out reports]

runs.py (read run directories and the Optuna study) -> meta.py (what each metric means, from the records)
-> aggregate.py (configurations, means, ranks) -> compare.py (paired tests; statistics in stats.py) ->
verdict.py (a best configuration only where a test supports it) -> checks.py (comparability, identity,
contamination, provenance) -> build.py (the report model) -> markdown.py (report.md, results.csv,
results.json), html.py (report.html from templates/), figures.py (PNG/SVG), explore.py (the data behind the
page's sortable leaderboard, hover-and-zoom plots and per-example view). fmt.py formats numbers for their
metric's scale and escapes strings. Never imports torch, nor eval/: a metric's metadata is read from eval.json.
"""
