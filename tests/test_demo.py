"""`make demo`: every example of the documentation page, end to end, exit status 0.

Run as a newcomer runs it, in a subprocess. Two cases run the same script with the
suite's own interpreter and environment instead of `make demo`: under `make test-asan`
(the extension built in place is the sanitizer build, which needs the suite's
LD_PRELOAD), and when the build stamp is stale (sources edited since the last
`make build`: `make demo` would rebuild the extension under the running suite).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k != "REDIS_URL" and not k.startswith(("MAKE", "MFLAGS"))}
    env.update(extra)
    return env


def run_demo(env: dict) -> subprocess.CompletedProcess:
    plain = {k: v for k, v in env.items()
             if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC")}
    fresh = not SANITIZED and subprocess.run(
        ["make", "-q", ".venv/.build-stamp"], cwd=REPO, env=plain,
        capture_output=True).returncode == 0
    if fresh:
        cmd, env = ["make", "--no-print-directory", "demo"], plain
    else:
        cmd = [sys.executable, os.path.join("examples", "demo.py")]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def check_output(out: str) -> None:
    for section in ("== In-Memory Caching", "== LRU Eviction", "== TTL Management",
                    "== Batch Operations", "== Integration with Backend", "== Redis Caching",
                    "== Multi-Level Caching", "== Connection Pooling (Redis)"):
        assert section in out, section
    assert "Hit rate: 100.00%" in out                      # in-memory stats()
    assert "size: 100 evictions: 50" in out                # LRU eviction
    assert "backend calls: 1 of 10 reads, hit rate: 90.00%" in out  # cache-aside
    assert "L1 hits: 0\nL2 hits: 0" in out                 # the page's prints
    assert "L1 hits: 1, L2 hits: 1, misses: 1, hit rate: 66.67%" in out
    assert "500 concurrent gets, hit rate: 100.00%" in out
    assert out.rstrip().endswith("demo: all examples ran")


def test_make_demo_starts_its_own_redis_and_cleans_up():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "bruno-redis-*")))
    proc = run_demo(clean_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(started a throwaway redis-server on port" in proc.stdout
    check_output(proc.stdout)
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "bruno-redis-*")))
    assert after <= before, after - before  # its server's directory is gone


def test_make_demo_uses_redis_url(redis_server):
    proc = run_demo(clean_env(REDIS_URL=redis_server.url))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started a throwaway" not in proc.stdout
    check_output(proc.stdout)
    # It used that server, and left only its statistics hashes behind.
    assert b"cmdstat_get:" in redis_server.command("INFO", "commandstats")
    leftover = redis_server.command("KEYS", "*")
    assert all(k.endswith(b"stats") for k in leftover), leftover
