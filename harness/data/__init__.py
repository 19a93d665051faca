"""Data stage: read a data set, check its rows, render prompts, tokenise, split, truncate or pack.

    harness train model=smollm2-135m data=e2e      # the pipeline calls prepare() through harness.data.cache
    harness eval RUN_DIR                           # the evaluator calls load_eval_examples() and render_prompt()

Formats (data.format, the FORMATS registry in formats.py): alpaca (instruction, input, output), prompt_completion
(prompt, completion), chat (messages: [{role, content}]), text (a `text` column or a raw .txt/.raw file).
data.fields maps these names to the file's columns. Files: JSON list, JSONL, CSV/TSV, Parquet, plain text (one row a
line), a saved `datasets` directory, or a Hub data set id (needs network). For a text source, a field
mapped to anything other than `text` names a line-aligned parallel file (comma-separated for several
references): that is how wmt22-de-en pairs its source file with two reference files.

Training examples are {"input_ids", "labels" (-100 = no loss), "attention_mask"}. The prompt is the
exact string render_prompt() gives the model at generation time; it is tokenised on its own so the
prompt/completion boundary is exact. Malformed rows are counted with their 1-based row numbers
(line numbers for JSONL, CSV and text; record numbers for JSON, Parquet and datasets) and either
reported in stats or, above data.max_bad_share, raised as a DataError. Details: docs/data.md.

Modules: read.py (files and bad rows) -> formats.py (FORMATS: normalised rows, prompts, encodings per format)
-> split.py (train/val) -> tokenize.py (prompt templates, masking, packing; shared by the formats) -> prepare.py
(the entry points; badrows.py: bad-row errors) -> cache.py (prepared data shared across trials).
"""

from harness.data.badrows import describe_bad_rows
from harness.data.formats import FORMATS, render_prompt
from harness.data.prepare import load_eval_examples, load_eval_set, prepare
from harness.data.read import DataError, EvalExample, EvalSet, Prepared, read_rows

__all__ = ["FORMATS", "DataError", "EvalExample", "EvalSet", "Prepared", "describe_bad_rows", "load_eval_examples",
           "load_eval_set", "prepare", "read_rows", "render_prompt"]
