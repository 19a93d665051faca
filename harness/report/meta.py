"""What each metric in the report means, read from the run records: eval metrics from the metric_meta that
eval.json's suite entries carry (declared in harness/eval/metrics.py when the runs were evaluated),
summary.* fields from the run record's own schema (harness/run/metric_meta.py). The report never guesses a
direction, a scale or a per-item key from a metric's name.
"""
from __future__ import annotations

from harness.report.runs import Run
from harness.run.metric_meta import SUMMARY_META, MetricMeta, recorded_meta


def metric_metas(runs: list[Run], metrics: list[str]) -> tuple[dict[str, MetricMeta | None], list[str]]:
    """(flat metric -> MetricMeta, or None when unknown; notes for the report's warnings).

    An eval metric's metadata is what the completed runs' eval.json declare for it. Runs recorded before
    eval.json carried metric_meta declare nothing: when no run declares a metric it is unknown (no
    direction, no per-item test), said in one line. Runs that declare it differently make it unknown too."""
    declared: dict[str, set[MetricMeta]] = {}
    old = 0
    for r in runs:
        if r.status not in ("completed", "baseline"):
            continue
        rec = recorded_meta(r.eval)
        for m, meta in rec.items():
            declared.setdefault(m, set()).add(meta)
        old += any(not m.startswith("summary.") and m not in rec for m in r.metrics)
    out: dict[str, MetricMeta | None] = {}
    unknown, conflicting = [], []
    for m in metrics:
        if m.startswith("summary."):
            out[m] = SUMMARY_META.get(m.removeprefix("summary."))
            continue
        metas = declared.get(m) or set()
        out[m] = next(iter(metas)) if len(metas) == 1 else None
        if not metas:
            unknown.append(m)
        elif len(metas) > 1:
            conflicting.append(m)
    notes = []
    if unknown:
        shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
        notes.append(f"Direction unknown for {shown}: {old} run(s) were recorded before eval.json carried "
                     "metric_meta, so these metrics get no best mark, no winner and no paired test "
                     "(re-run `harness eval RUN_DIR` to record it).")
    for m in conflicting:
        notes.append(f"Runs declare different metadata for {m} ({', '.join(sorted(str(x.to_record()) for x in declared[m]))}): "
                     "its direction is treated as unknown.")
    return out, notes


def directions(metas: dict[str, MetricMeta | None]) -> dict[str, str | None]:
    """flat metric -> 'max', 'min' or None."""
    return {m: (meta.direction if meta else None) for m, meta in metas.items()}
