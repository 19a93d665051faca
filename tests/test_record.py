"""The run record's writers (harness/run/record.py): summary.json and manifest.json are written in one place
each, checked against their TypedDict schema, so a misspelt or mistyped field fails where it is written."""

from __future__ import annotations

import json

import pytest

from harness.run.record import EXIT_CODES, STATUSES, RecordError, write_manifest, write_summary


def test_summary_is_written_atomically_when_it_fits_the_schema(tmp_path):
    write_summary(tmp_path, {"schema": 1, "status": "completed", "best_val_loss": 1.5, "steps": 3, "axes": {"m": 1},
                             "pruned_at_step": None})
    assert json.loads((tmp_path / "summary.json").read_text())["best_val_loss"] == 1.5
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("bad,message", [
    ({"status": "completed", "best_val_los": 1.0}, "unknown field 'best_val_los'"),
    ({"status": "completed", "steps": "3"}, "'steps' = '3' is not a int"),
    ({"status": "completed", "steps": True}, "is not a int"),
    ({"status": "done"}, "status 'done' is not one of"),
])
def test_summary_outside_the_schema_is_refused_and_nothing_is_written(tmp_path, bad, message):
    with pytest.raises(RecordError, match=message):
        write_summary(tmp_path, bad)
    assert not (tmp_path / "summary.json").exists()


def test_manifest_is_checked_too(tmp_path):
    write_manifest(tmp_path, {"schema": 1, "seeds": {"train": 0}, "model": {"sha256": "x"}})
    with pytest.raises(RecordError, match="unknown field 'seed'"):
        write_manifest(tmp_path, {"seed": 0})


def test_every_status_but_running_and_baseline_has_an_exit_code():
    assert set(EXIT_CODES) == set(STATUSES) - {"running", "baseline"}


def test_package_versions_are_read_once_per_process_and_missing_ones_are_none():
    from importlib import metadata

    from harness.run import environment

    names = ("torch", "no-such-package-here")
    first = environment.package_versions(names)
    assert first == {"torch": metadata.version("torch"), "no-such-package-here": None}
    first["torch"] = "edited by a caller"
    hits = environment._package_versions.cache_info().hits
    assert environment.package_versions(names)["torch"] == metadata.version("torch")  # a copy each time
    assert environment._package_versions.cache_info().hits == hits + 1
