"""Training stage: fit one run (harness/train/fit.py), read top to bottom.

fit.py (the flat trainer), loss.py (the Trainer: target-only loss; validation loss from model/scoring.py),
callbacks.py (metrics.jsonl, divergence, early stopping, pruning), objectives.py (OBJECTIVES: training
objectives by name), bf16cpu.py (bf16 on CPUs that emulate it), attention.py (bf16 training's attention kernel on
CPUs, where it measures faster), dropout.py (LoRA dropout masks from 15-bit integers on CPUs). Never imports harness.eval:
harness/pipeline.py runs the evaluation after fit().
"""
