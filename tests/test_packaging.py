"""What a wheel of rnnkit carries besides Python modules: the C++ sources the fused engine compiles on first use, the
playground's static files and the task data. A file the package-data globs miss is absent from an installed (not
editable) rnnkit, and the engine then falls back to its Python loops; the globs once named a folder that had moved."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rnnkit"


def test_package_data_globs_cover_every_non_python_file_the_package_reads():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rnnkit"]
    needed = [path for folder in ("ops/csrc", "serve/static", "tasks/data") for path in (PACKAGE / folder).iterdir() if path.is_file()]
    assert any(path.suffix == ".h" for path in needed) and any(path.suffix == ".cpp" for path in needed)
    missed = [str(path.relative_to(PACKAGE)) for path in needed if not any(fnmatch.fnmatch(str(path.relative_to(PACKAGE)), glob) for glob in globs)]
    assert missed == []
    for glob in globs:  # and no glob names a folder that is not there
        assert list(PACKAGE.glob(glob)), glob
