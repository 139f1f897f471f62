"""Types that match: the stubs, and a typed example under --strict (README "Development").

The README's "Typed:" paragraph of "Development"; ARCHITECTURE "Async methods look like
`async def` (asyncmethod.c)".

Each check runs as a user would run it, in a subprocess of this interpreter from the
repository root (so the package checked and imported is this working tree's):

    python -m mypy.stubtest bruno_memory_c --allowlist stubtest-allowlist.txt
    python -m mypy --strict examples/typed_usage.py
    python examples/typed_usage.py

mypy's cache goes to a temporary directory, not into the tree (stubtest: a config file
naming it; mypy: MYPY_CACHE_DIR).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from bruno_memory_c.testing import RedisServer
from tests.support import REPO

ALLOWLIST = "stubtest-allowlist.txt"
EXAMPLE = os.path.join("examples", "typed_usage.py")
#: What a sanitizer build (make test-asan) needs in a process that loads the extension.
SANITIZER_ENV = ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC")


def run(args: list[str], tmp_path, *, loads_extension: bool,
        **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k != "REDIS_URL" and (loads_extension or k not in SANITIZER_ENV)}
    # The working tree's package, whether or not it is installed in this interpreter.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["MYPY_CACHE_DIR"] = str(tmp_path / "mypy-cache")
    env.update(extra)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return (f"{' '.join(proc.args)} exited with {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


def test_stubtest_passes(tmp_path):
    # stubtest ignores MYPY_CACHE_DIR: its cache directory comes from a config file.
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\ncache_dir = {tmp_path / 'mypy-cache'}\n")
    proc = run(["-m", "mypy.stubtest", "bruno_memory_c", "--allowlist", ALLOWLIST,
                "--mypy-config-file", str(config)], tmp_path, loads_extension=True)
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found" in proc.stdout, report(proc)


def test_allowlist_entries_are_explained():
    """Every entry of the allowlist comes after a comment saying why."""
    with open(os.path.join(REPO, ALLOWLIST)) as f:
        lines = [line.strip() for line in f]
    entries = 0
    for i, line in enumerate(lines):
        if not line or line.startswith("#"):
            continue
        entries += 1
        re.compile(line)  # stubtest reads each entry as a regular expression
        j = i - 1
        while j >= 0 and lines[j] and not lines[j].startswith("#"):
            j -= 1  # entries grouped under one comment
        assert j >= 0 and lines[j].startswith("#"), f"{ALLOWLIST}: {line!r} has no comment"
    assert entries <= 4, f"{ALLOWLIST} has grown to {entries} entries: fix the stubs instead"


def test_typed_example_passes_mypy_strict(tmp_path):
    proc = run(["-m", "mypy", "--strict", EXAMPLE], tmp_path, loads_extension=False)
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found" in proc.stdout, report(proc)


def test_typed_example_runs_with_its_own_redis(tmp_path):
    proc = run([EXAMPLE], tmp_path, loads_extension=True)
    assert proc.returncode == 0, report(proc)
    assert "(a throwaway redis-server on port" in proc.stdout, report(proc)
    for line in ("InMemoryCache: hit rate 66.67%", "RedisCache: hit rate 66.67%",
                 "RedisCache: CacheError as documented:", "RedisCache: unreachable server:",
                 "MultiLevelCache: hit rate 66.67%", "MultiLevelCache: CacheError from L2:",
                 "MultiLevelCache over DictLevel: hit rate 66.67%"):
        assert line in proc.stdout, report(proc)
    assert proc.stdout.rstrip().endswith("typed_usage: done"), report(proc)


def test_typed_example_on_redis_url_leaves_nothing_behind(tmp_path):
    with RedisServer() as server:
        server.command("SET", "someone:else", "kept")
        proc = run([EXAMPLE], tmp_path, loads_extension=True, REDIS_URL=server.url)
        assert proc.returncode == 0, report(proc)
        assert "throwaway" not in proc.stdout, report(proc)
        assert proc.stdout.rstrip().endswith("typed_usage: done"), report(proc)
        assert server.command("KEYS", "*") == [b"someone:else"]
