"""`python -m harness ...` is the same as the `harness` command (used for trial child processes)."""

import sys

from harness.cli import main

sys.exit(main())
