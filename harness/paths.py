"""Where things live: the data root, the config directory, the model cache, run directories.

One setting each, environment first:
  HARNESS_ROOT   where runs/, studies/ and reports/ go (default: the current directory); `--root DIR` on
                 train, eval, sweep, status and report sets it (harness/commands/common.py)
  HARNESS_DATA   data root for the ready-made data configs (default: ../shared/data beside the repo)
  HARNESS_CACHE  converted models and other caches (default: ~/.cache/harness)
  HARNESS_CONF   the Hydra config directory (default: the shipped conf/, see shipped())
  HARNESS_CONFIG_PATH  the user's own config folders, dir1:dir2 (os.pathsep-separated), searched before
                 conf/ for group options (data/, model/, ... inside each); `--config-dir DIR` adds to it
Run names are checked here so that no name can escape the output directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")


def data_root() -> Path:
    env = os.environ.get("HARNESS_DATA")
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def cache_root() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "harness"


def shipped(name: str) -> Path:
    """A folder that ships with the package: `conf` or `sweeps`. In a source checkout (and an editable
    install) it is the top-level folder of the repository; a wheel carries the same folder inside the
    package (harness/conf, harness/sweeps: setup.py maps them there), so there is one copy either way."""
    packaged = PACKAGE_DIR / name
    return packaged if packaged.is_dir() else REPO_ROOT / name


def conf_dir() -> Path:
    env = os.environ.get("HARNESS_CONF")
    return Path(env).expanduser().resolve() if env else shipped("conf")


def root() -> Path:
    """The folder that holds runs/, studies/ and reports/: $HARNESS_ROOT, else the current directory."""
    env = os.environ.get("HARNESS_ROOT")
    return Path(env).expanduser().resolve() if env else Path.cwd()


def under_root(path: str | Path) -> Path:
    """A relative path (a default such as `runs`, or output_dir=runs in a config) under root(); absolute
    and ~ paths as they are."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else root() / p


def runs_root() -> Path:
    return root() / "runs"


def studies_dir() -> Path:
    return root() / "studies"


def reports_dir() -> Path:
    return root() / "reports"


def user_config_dirs() -> list[Path]:
    """The user's config folders from HARNESS_CONFIG_PATH, in order (the first wins), absolute."""
    env = os.environ.get("HARNESS_CONFIG_PATH", "")
    return [Path(d).expanduser().resolve() for d in env.split(os.pathsep) if d.strip()]


def resolve_data_path(path: str) -> Path:
    """A data path in a config: absolute, ~, ./relative (to the working directory), or relative to
    the data root (the default for the shipped configs, e.g. `alpaca/alpaca_en_demo.json`)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if path.startswith(("./", "../")):
        return p.resolve()
    return data_root() / p


# File extensions the data reader knows (harness/data/read.py picks a reader by them).
DATA_FILE_TYPES = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow",
    ".txt": "text", ".raw": "text", ".text": "text", ".tokens": "text",
}

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def is_hub_data_id(path: str) -> bool:
    """Whether a data.path that does not exist locally is read as a Hub data set id: `name` or
    `owner/name`, without a data-file extension (`alpaca/missing.json` is a missing file)."""
    return bool(_HUB_ID.fullmatch(path)) and Path(path).suffix.lower() not in DATA_FILE_TYPES


def check_name(name: str, what: str = "run name") -> str:
    """Reject names that could escape the output directory or break a file system."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} is not allowed: use 1-128 characters from letters, digits and ._+=- "
            "starting with a letter or digit, no '..' and no '/'"
        )
    return name


def safe_join(root: str | Path, *parts: str) -> Path:
    """Join parts under root and make sure the result stays inside root."""
    root = Path(root).resolve()
    out = root.joinpath(*parts).resolve()
    if out != root and root not in out.parents:
        raise ValueError(f"path {out} escapes {root}")
    return out
