"""Packaging (README "Install", "Development"): builds from a copy of the work tree, never
in the repository itself."""
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO


def _work_tree_copy(where):
    """The work tree as it stands, minus what builds and venvs leave there: the builds
    never write into the repository (nor race each other or `make` there)."""
    dst = where / "tree"
    shutil.copytree(REPO, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "*.so", "__pycache__", ".pytest_cache"))
    return dst


@pytest.fixture
def work_tree(tmp_path):
    """A copy of the work tree under tmp_path ("tree"), to build from."""
    return _work_tree_copy(tmp_path)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist, built (without isolation) from a copy of the work tree."""
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir",
                    str(out / "dist"), str(_work_tree_copy(out))],
                   check=True, capture_output=True, text=True, cwd=out)
    (path,) = (out / "dist").glob("*.tar.gz")
    return path
