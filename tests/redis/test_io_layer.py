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
                                              "respscan.c", "cluster_slot.c")),
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


def keyslot_cases() -> list[bytes]:
    """Keys for the slot test: hash-tag edge cases, then random ones (random bytes,
    braces placed at random, lengths 0 to 300)."""
    import random

    rng = random.Random(20261129)
    edges = [b"", b"{", b"}", b"{}", b"}{", b"{}{}", b"foo{}{bar}", b"foo{{bar}}zap",
             b"foo{bar}{zap}", b"{bar", b"bar}", b"{user1000}.following", b"x{}", b"{a}",
             b"a{b}c", b"{{}}", b"\x00{\x00}\x00", "caf\u00e9{\u00e9}".encode(), b"123456789",
             b"prefix:{tag}rest", b"{" * 50 + b"}" * 50]
    pieces = [b"{", b"}", b"{}", b"a", b"tag", b":", b"\xff", b"\x00"]
    keys = list(edges)
    for _ in range(400):
        parts = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
                 if rng.random() < 0.5 else rng.choice(pieces)
                 for _ in range(rng.randrange(0, 8))]
        keys.append(b"".join(parts))
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(300))) for _ in range(50)]
    return keys


def test_the_hash_slot_of_a_key_is_redis_own(harness):
    """cluster_slot.c: CRC16-XMODEM modulo 16384 with Redis' hash tags (the first '{',
    the first '}' after it, a non-empty tag), for edge cases and random keys, as a
    cluster-enabled redis-server's CLUSTER KEYSLOT computes it; and the same whatever
    the split of the key into prefix + rest (bio_key_slot2)."""
    keys = keyslot_cases()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    done = subprocess.run([harness, "keyslot"], input="".join(k.hex() + "\n" for k in keys),
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    ours = [int(line) for line in done.stdout.split()]
    assert len(ours) == len(keys)
    with RedisServer(extra_args=("--cluster-enabled", "yes")) as server:
        with server.connect() as s:
            s.sendall(b"".join(b"*3\r\n$7\r\nCLUSTER\r\n$7\r\nKEYSLOT\r\n$%d\r\n%s\r\n"
                               % (len(k), k) for k in keys))
            f = s.makefile("rb")
            theirs = [int(f.readline()[1:]) for _ in keys]
    wrong = [(k, o, t) for k, o, t in zip(keys, ours, theirs) if o != t]
    assert not wrong, wrong[:5]
    assert len(set(theirs)) > 300  # (the keys do spread)
