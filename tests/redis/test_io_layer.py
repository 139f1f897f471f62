"""RedisCache's I/O layer in C (ARCHITECTURE "The I/O thread (io_engine.c, io_conn.c)").

The layer below Python (csrc/io_engine.c, io_conn.c, resp.c, respscan.c):
tests/c/io_harness.c is compiled here (gcc, the hiredis headers: what building the
extension needs anyway) and linked with wrapped malloc/calloc/free, so that an
allocation can be made to fail and every freed block inspected — what a Python test
cannot see. See docs/ARCHITECTURE.md, "Failure model".
"""
from __future__ import annotations

import os
import subprocess

import pytest

from bruno_memory_c.testing import RedisServer
from tests.support import REPO, TESTS



@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> str:
    exe = str(tmp_path_factory.mktemp("io") / "io_harness")
    csrc = os.path.join(REPO, "csrc")
    cmd = ["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-I", csrc,
           *(os.path.join(csrc, f) for f in ("io_engine.c", "io_conn.c", "io_tls.c", "io_sentinel.c", "resp.c",
                                              "respscan.c")),
           os.path.join(TESTS, "c", "io_harness.c"), "-lhiredis", "-lssl", "-lcrypto",
           "-lpthread", "-lm",
           "-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free", "-o", exe]
    # The harness is not ours to sanitize: no preloaded ASan runtime in the compiler.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    built = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    return exe


def run(harness: str, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, *args], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def test_reply_cost_scanner(harness):
    """Valid RESP2 scans clean however it is cut into two reads; a bulk, an array
    (64 bytes per element) or a status line over the limit is refused at once; the
    cost is per reply; bytes that are not RESP2 are a protocol error."""
    run(harness, "scan")


def test_a_failed_client_allocation_closes_no_descriptor(harness):
    """Every allocation of a new client failing in turn: no client, and standard input
    (descriptor 0, the initial value of a zeroed client's fd) still open."""
    run(harness, "client-alloc-fail")


@pytest.mark.parametrize("length, db", [(22, 0), (60, 3), (500, 1)])
def test_the_password_is_wiped_before_its_memory_is_freed(harness, length, db):
    """Connect with AUTH (and SELECT), disconnect, let the client go: no block freed on
    the way, or given up by a realloc (the AUTH command built for the handshake, the
    output buffer, the client's copy of the password), still held the password."""
    password = ("Wiped-" + os.urandom(length).hex())[:length]
    with RedisServer(password=password) as server:
        run(harness, "secrets", str(server.port), password, str(db))
