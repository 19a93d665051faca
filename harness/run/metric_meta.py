"""What a number in a run record means: whether higher is better, its scale and where its per-item values are.

    from harness.run.metric_meta import MetricMeta, SUMMARY_META, recorded_meta
    MetricMeta(higher_is_better=True, scale="binary", per_item="acc").to_record()
    recorded_meta(read_eval(run_dir))      # {"hellaswag.acc": MetricMeta(...), ...} from eval.json's metric_meta

Eval metrics declare theirs where they are defined (harness/eval/metrics.py and the suite kinds); the
evaluator writes it into each eval.json suite entry as `metric_meta` (docs/run-record.md). summary.json's
numeric fields are the run record's own, so their meaning is declared here, beside the record's schema.
The dataclass lives in run/ (the bottom layer) because the report reads it back and never imports eval/.
"""
from __future__ import annotations

from dataclasses import dataclass

SCALES = {
    "binary": "share of items whose per-item value is 1 (each item 0 or 1), 0-1; shown x100 as points",
    "fraction": "0-1; shown x100 as points",
    "percent": "0-100 (BLEU, chrF, TER); shown as is",
    "raw": "any other unit (perplexity, nats, bits, NIST, CIDEr, seconds, bytes, counts); shown as is",
}

POINTS = {"binary": 100.0, "fraction": 100.0}  # scale -> factor from a value to points (metric units); others 1


@dataclass(frozen=True)
class MetricMeta:
    """higher_is_better: True, False, or None (no direction: a count, a standard error, unknown);
    scale: a key of SCALES; per_item: the key in samples/<suite>.jsonl rows that holds the item's value
    of this metric, None when there is no per-item form."""

    higher_is_better: bool | None
    scale: str
    per_item: str | None = None

    def __post_init__(self):
        if self.scale not in SCALES:
            raise ValueError(f"metric scale {self.scale!r} is not one of {', '.join(SCALES)}")
        if self.higher_is_better not in (True, False, None):
            raise ValueError(f"higher_is_better must be True, False or None, got {self.higher_is_better!r}")

    @property
    def direction(self) -> str | None:
        """'max', 'min' or None: how the report and sweeps spell higher_is_better."""
        return None if self.higher_is_better is None else "max" if self.higher_is_better else "min"

    @property
    def points(self) -> float:
        """Factor from a value to the report's points (metric units; 0-1 scales x100)."""
        return POINTS.get(self.scale, 1.0)

    def to_record(self) -> dict:
        return {"higher_is_better": self.higher_is_better, "scale": self.scale, "per_item": self.per_item}

    @classmethod
    def from_record(cls, d) -> "MetricMeta | None":
        """A metric_meta entry read back from eval.json; None when it is not one (hand-edited, other schema)."""
        if not isinstance(d, dict):
            return None
        try:
            per_item = d.get("per_item")
            return cls(d.get("higher_is_better"), str(d.get("scale")), str(per_item) if per_item else None)
        except ValueError:
            return None


UNKNOWN = MetricMeta(None, "raw", None)  # what the evaluator records for a metric nobody declared


def _m(higher_is_better: bool | None, scale: str = "raw") -> MetricMeta:
    return MetricMeta(higher_is_better, scale, None)


# summary.json's numeric fields (docs/run-record.md) as `summary.<field>`: per-run values, no per-item form.
# Costs are lower-is-better, throughput higher; bookkeeping numbers (trial, seed, steps) have no direction.
SUMMARY_META: dict[str, MetricMeta] = {
    "schema": _m(None), "trial": _m(None), "seed": _m(None),
    "trainable_params": _m(False), "total_params": _m(False), "trainable_share": _m(False, "fraction"),
    "peak_memory_mb": _m(False),
    "wall_time_s": _m(False), "train_time_s": _m(False), "eval_time_s": _m(False),
    "train_tokens": _m(None), "tokens_per_s": _m(True), "steps": _m(None), "epochs_done": _m(None),
    "train_loss_mean": _m(False), "final_train_loss": _m(False), "final_val_loss": _m(False), "best_val_loss": _m(False),
    "pruned_at_step": _m(None), "adapter_bytes": _m(False),
}


def recorded_meta(eval_doc: dict | None) -> dict[str, MetricMeta]:
    """`<suite>.<metric>` -> MetricMeta from an eval.json's suite entries (none for entries written before
    eval.json carried metric_meta)."""
    out = {}
    for suite, res in ((eval_doc or {}).get("suites") or {}).items():
        for metric, d in ((res or {}).get("metric_meta") or {}).items():
            meta = MetricMeta.from_record(d)
            if meta is not None:
                out[f"{suite}.{metric}"] = meta
    return out
