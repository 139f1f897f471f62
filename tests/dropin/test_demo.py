"""`make demo`: every example of the documentation runs (README "The two commands").

Every example of the documentation page, end to end, exit status 0.

Run as a newcomer runs it, in a subprocess. Two cases run the same script with the
suite's own interpreter and environment instead of `make demo`: under `make test-asan`
(the extension built in place is the sanitizer build, which needs the suite's
LD_PRELOAD), and when the build stamp is stale (sources edited since the last
`make build`: `make demo` would rebuild the extension under the running suite).
"""
from __future__ import annotations

import os
import subprocess
import sys

from bruno_memory_c.testing import RedisServer
from tests.support import REPO

#: The Makefile's venv this suite runs in (`make test-all` runs one per interpreter).
VENV = os.environ.get("BRUNO_VENV", ".venv")


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
        ["make", "-q", f"VENV={VENV}", f"{VENV}/.build-stamp"], cwd=REPO, env=plain,
        capture_output=True).returncode == 0
    if fresh:
        cmd, env = ["make", "--no-print-directory", f"VENV={VENV}", "demo"], plain
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


def test_make_demo_starts_its_own_redis_and_cleans_up(tmp_path):
    # Its own TMPDIR: the throwaway server's directory must be gone afterwards.
    proc = run_demo(clean_env(TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(started a throwaway redis-server on port" in proc.stdout
    check_output(proc.stdout)
    assert list(tmp_path.iterdir()) == []


def test_make_demo_uses_redis_url_and_leaves_its_data_alone():
    # A shared server: a password, database 3, and keys of someone else's that the
    # demo's names would collide with.
    with RedisServer(password="s3cret") as server:
        theirs = {b"bruno:cache:key": b'"theirs"', b"myapp:session:123": b'"theirs"',
                  b"bruno:cache:k": b'"theirs"', b"myapp:stats": b"x"}
        for db in ("0", "3"):
            for k, v in theirs.items():
                server.command("EVAL", f"redis.call('SELECT', {db}); "
                               "return redis.call('SET', KEYS[1], ARGV[1])", "1", k, v)
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
        proc = run_demo(clean_env(REDIS_URL=url))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "started a throwaway" not in proc.stdout
        check_output(proc.stdout)
        for db in ("0", "3"):
            keys = server.command("EVAL", f"redis.call('SELECT', {db}); "
                                  "return redis.call('KEYS', '*')", "0")
            assert sorted(keys) == sorted(theirs), (db, keys)  # nothing added or lost
            for k, v in theirs.items():
                assert server.command("EVAL", f"redis.call('SELECT', {db}); "
                                      "return redis.call('GET', KEYS[1])", "1", k) == v
        # It did its work in database 3.
        info = server.command("INFO", "keyspace")
        assert b"db3:" in info
        stats = server.command("INFO", "commandstats")
        assert b"cmdstat_get:" in stats
