"""Benchmarks of the harness against what users would use instead (a plain PyTorch loop, TRL's
SFTTrainer defaults, lm-eval run directly) and against the machine's measured matmul peak.

    python -m benchmarks.run [--only NAME,...] [--quick] [--reps N]     # make bench

One module per benchmark (matmul, training, packing, evaluation, sweep_overhead, report_scale);
results in benchmarks/results/ (Markdown + JSON with the machine description). docs/benchmarks.md
explains what is measured and how to read it.
"""
