"""Reproductions of published results, one module each, runnable as `python -m harness.recipes.<name>`.

    python -m harness.recipes.qlora_elo      QLoRA (Dettmers et al., 2023) Table 1: Elo from GPT-4 judgments
    python -m harness.recipes.qlora_dtypes   QLoRA Table 2: data types vs the unquantized model (after its sweep)

Each writes reports/reproduce-<name>/ with results.json (ours vs the paper), references.json (the
published numbers as {metric, value, tolerance, source} records) and report.md; see docs/reproductions/.
"""
