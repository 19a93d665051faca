"""Model stage: resolve a model config to local safetensors, load it (quantized or not), and the method
builders (full / LoRA / QLoRA / DoRA / 8-bit) that are the only place where methods differ.

load.py (sources, conversion cache, tokenizers, a finished run's weights), methods.py (quantization and
PEFT configs), device.py (train.device / train.precision resolution shared by training and evaluation),
scoring.py (the validation loss, one definition for the trainer and the `val` suite; batch collation).
"""
