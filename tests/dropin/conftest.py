"""Drop-in fidelity (README "Use it under bruno-memory: `install()`", "Differences from
bruno-memory", "bruno-memory's own tests pass against ours") and the README's own
claims: the wall-clock shim the monotonic-clock test preloads."""
import os
import shutil
import subprocess

import pytest

from tests.support import SCRIPTS


@pytest.fixture(scope="session")
def walljump(tmp_path_factory) -> str:
    """tests/scripts/walljump.c (a wall-clock shim for LD_PRELOAD), compiled for this test
    session: the path of the shared library."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    assert cc, "a C compiler is needed (the extension itself is built with one)"
    so = tmp_path_factory.mktemp("walljump") / "walljump.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(so),
                    os.path.join(SCRIPTS, "walljump.c"), "-ldl"],
                   check=True, capture_output=True, timeout=120)
    return str(so)
