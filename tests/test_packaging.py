"""What a wheel ships: every data file of the package (the container setup script, the
catalog, the recipes, the engine's configs) is named by pyproject's package-data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mlc"


def test_every_data_file_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["mlc"]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    data = {
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert PACKAGE / "containers" / "setup.sh" in data
    assert sorted(map(str, data - shipped)) == []
