"""Reproduction: QLoRA (Dettmers et al., 2023) Table 2, the data-type claim, at small scale.

    harness sweep sweeps/reproduce-qlora-dtypes.yaml     # each trial: `harness eval` of a quantized base
    python -m harness.recipes.qlora_dtypes [--runs-root runs] [--out reports]   # defaults: under $HARNESS_ROOT (the cwd)

Reads the study's run records only (summary.json + eval.json), and writes
reports/reproduce-qlora-dtypes/dtypes.json and dtypes.md: per model, each bitsandbytes data type's
WikiText-2 word perplexity, its increase over the unquantized (dequantised GGUF) model, its weight
memory, and whether the paper's ordering holds (NF4 below FP4 at the same double-quantization
setting; Int8 close to 16/32-bit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness import atomic, paths
from harness.run.record import find_run_dirs, flat_metrics, read_summary

STUDY = "reproduce-qlora-dtypes"
METRIC = "wikitext2.word_perplexity"
# the paper's Table 2 (Pile Common Crawl mean perplexity over 125M-13B models): reference only
PAPER = {"Int4": 34.34, "FP4 (E2M1)": 31.07, "FP4 (E3M0)": 29.48, "NF4 + DQ": 27.41}
ORDER = ["base", "base-int8", "base-nf4-dq", "base-nf4", "base-fp4-dq", "base-fp4"]
LABELS = {"base": "unquantized (dequantised GGUF)", "base-int8": "Int8 (LLM.int8)", "base-nf4-dq": "NF4 + DQ",
          "base-nf4": "NF4", "base-fp4-dq": "FP4 (E2M1) + DQ", "base-fp4": "FP4 (E2M1)"}


def collect(run_dirs: list[Path]) -> dict[str, dict[str, dict]]:
    """model -> data type label -> {perplexity, model_bytes, run_dir} (latest completed run wins)."""
    out: dict[str, dict[str, dict]] = {}
    for d in sorted(run_dirs):
        s = read_summary(d) or {}
        if s.get("status") != "baseline":
            continue
        flat = flat_metrics(d)
        if METRIC not in flat:
            continue
        out.setdefault(s["model"], {})[s["method"]] = {
            "perplexity": flat[METRIC], "model_bytes": s.get("model_bytes"), "run_dir": str(d),
        }
    return out


def compare(by_model: dict[str, dict[str, dict]]) -> dict:
    """Increases over the unquantized model and the ordering checks, per model (pure)."""
    result = {}
    for model, types in sorted(by_model.items()):
        base = types.get("base", {}).get("perplexity")
        rows = []
        for label in [t for t in ORDER if t in types] + sorted(set(types) - set(ORDER)):
            ppl = types[label]["perplexity"]
            rows.append({
                "dtype": label, "name": LABELS.get(label, label), "perplexity": ppl,
                "increase": None if base is None else ppl - base,
                "increase_pct": None if base is None else 100 * (ppl - base) / base,
                "model_bytes": types[label].get("model_bytes"),
            })
        checks = {}
        for dq in ("", "-dq"):
            nf4, fp4 = types.get(f"base-nf4{dq}"), types.get(f"base-fp4{dq}")
            suffix = " + DQ" if dq else ""
            if nf4 and fp4:
                checks[f"NF4{suffix} < FP4{suffix}"] = nf4["perplexity"] < fp4["perplexity"]
        four_bit = [types[t]["perplexity"] for t in ORDER if t.startswith(("base-nf4", "base-fp4")) and t in types]
        if "base-int8" in types and four_bit:
            checks["Int8 closer to unquantized than every 4-bit type"] = types["base-int8"]["perplexity"] < min(four_bit)
        result[model] = {"rows": rows, "checks": checks}
    return result


def to_markdown(result: dict) -> str:
    lines = [
        "# QLoRA Table 2 at small scale: bitsandbytes data types vs the unquantized model",
        "",
        "WikiText-2 word perplexity of each base model quantized without training (lower is better).",
        "The paper (Dettmers et al., 2023, Table 2; Pile Common Crawl, 125M-13B models, reference only): "
        + ", ".join(f"{k} {v}" for k, v in PAPER.items()) + ".",
        "",
    ]
    for model, res in result.items():
        lines += [f"## {model}", "", "| data type | word perplexity | increase | increase % | weights (MB) |",
                  "|---|---:|---:|---:|---:|"]
        for r in res["rows"]:
            inc = "" if r["increase"] is None else f"{r['increase']:+.3f}"
            pct = "" if r["increase_pct"] is None else f"{r['increase_pct']:+.2f}%"
            mb = "" if not r["model_bytes"] else f"{r['model_bytes'] / 2**20:.0f}"
            lines.append(f"| {r['name']} | {r['perplexity']:.3f} | {inc} | {pct} | {mb} |")
        lines.append("")
        for check, ok in res["checks"].items():
            lines.append(f"- {check}: {'holds' if ok else 'does NOT hold'}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-root", default=None, help="default: runs/ under $HARNESS_ROOT (the current directory)")
    p.add_argument("--study", default=STUDY)
    p.add_argument("--out", default=None, help="default: reports/ under $HARNESS_ROOT (the current directory)")
    args = p.parse_args(argv)
    args.runs_root, args.out = args.runs_root or paths.runs_root(), args.out or paths.reports_dir()
    run_dirs = find_run_dirs(Path(args.runs_root) / args.study)
    by_model = collect(run_dirs)
    if not by_model:
        print(f"no evaluated runs under {args.runs_root}/{args.study}: run `harness sweep sweeps/reproduce-qlora-dtypes.yaml` first")
        return 1
    result = compare(by_model)
    out = Path(args.out) / args.study
    atomic.write_json(out / "dtypes.json", {"metric": METRIC, "paper_table2": PAPER, "models": result})
    md = to_markdown(result)
    atomic.write_text(out / "dtypes.md", md)
    print(md)
    print(f"written: {out / 'dtypes.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
