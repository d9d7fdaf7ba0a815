"""The package's import layers (.importlinter): every import points down, checked by import-linter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_the_layers():
    exe = shutil.which("lint-imports")
    assert exe, "lint-imports not found: install the dev extra (pip install -e '.[dev]')"
    result = subprocess.run([exe, "--config", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
    assert "2 kept, 0 broken" in result.stdout  # layers point down; inference never imports training code
