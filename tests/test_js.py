"""The front end's own checks, run from pytest: TypeScript type-check and
the Node tests of the codecs and pure helpers (js/test/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parents[1] / "js"
NPM = shutil.which("npm")
pytestmark = pytest.mark.skipif(NPM is None, reason="needs Node.js and npm")


@pytest.fixture(scope="module")
def node_modules():
    if not (JS / "node_modules" / ".package-lock.json").is_file():
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, capture_output=True)


def test_typescript_type_checks(node_modules):
    result = subprocess.run([NPM, "run", "typecheck"], cwd=JS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_tests_of_codecs_and_helpers(node_modules):
    result = subprocess.run([NPM, "test"], cwd=JS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout
