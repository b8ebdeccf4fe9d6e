"""`RunInfo` writes the library versions into the run's log folder, and nowhere without one."""

import json
from pathlib import Path
from types import SimpleNamespace

from vssl.callbacks import RunInfo


def trainer(log_dir: Path, loggers: list) -> SimpleNamespace:
    return SimpleNamespace(log_dir=str(log_dir), is_global_zero=True, loggers=loggers)


def test_versions_go_to_the_log_folder(tmp_path: Path):
    RunInfo().on_fit_start(trainer(tmp_path / "version_0", [object()]), None)
    assert json.loads((tmp_path / "version_0" / "versions.json").read_text())["torch"]


def test_without_a_logger_nothing_is_written_in_the_working_directory(tmp_path: Path):
    (tmp_path / "versions.json").write_text("a file of the user's\n")
    RunInfo().on_fit_start(trainer(tmp_path, []), None)
    assert (tmp_path / "versions.json").read_text() == "a file of the user's\n"
