"""What the test areas share: one definition of each helper (``from tests.support import ...``).

- event loops: ``LOOP_FACTORIES`` / ``EXPECTED_LOOP_TYPE`` (the root conftest.py runs every
  async test under each), ``run_on_new_loop``, ``drive`` (a ready awaitable, no loop);
- waiting for states, never for a guessed time: ``wait_until`` (a thread), ``until`` and
  ``poll`` (a coroutine), ``sent_to`` (bytes queued at a stalled server), ``bounded_by``
  (an await with hang detection, each area's limit its own named constant);
- what a Redis server received or holds: ``Monitor`` (MONITOR), ``ExpiryWindow``
  (PEXPIRETIME against the server's clock), ``server_calls`` (INFO commandstats),
  ``raw_json``, ``hgetall``, ``error_records`` (the cache's logged errors);
- our RedisCache on a test server: ``cache_maker``;
- the fault tests of RedisCache and MultiLevelCache (README "RedisCache API", Failures):
  their bounds ``TIMEOUT``, ``HANG``, ``RECOVER``, ``STALL``, and ``stalled``,
  ``on_the_connection``, ``wait_in_flight_zero``, ``ml_counters``, ``awaitables_alive``;
- subprocesses: ``run_script`` (a file of tests/scripts/), ``run_python`` (a short
  snippet), both from the repository root in a fresh interpreter.

Submodules: ``reference`` (the bruno-memory 0.1.5 loader), ``hostile`` (a fake Redis
that misbehaves on purpose), ``leakmeter`` (memory meters that work under ASan too).
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import uvloop

from bruno_memory_c import CacheAwaitable, RedisCache

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
SCRIPTS = os.path.join(TESTS, "scripts")

#: The logger every cache logs its errors on.
LOGGER = "bruno_memory_c"


# ------------------------------------------------------------------ event loops


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    """The default asyncio loop, whatever policy happens to be installed."""
    return asyncio.SelectorEventLoop()


LOOP_FACTORIES = {
    "asyncio": _asyncio_loop,
    "uvloop": uvloop.new_event_loop,
}

#: What the running loop of a test parametrized with each factory must be.
EXPECTED_LOOP_TYPE = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.Loop,
}


def run_on_new_loop(loop_factory, main):
    """Run main (a coroutine or a cache awaitable) to its result on a fresh loop made by
    loop_factory, closed afterwards."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def drive(aw):
    """Run a cache awaitable synchronously (no event loop): it must finish on its first
    send()."""
    try:
        aw.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError(f"{aw!r} suspended instead of completing")


# ------------------------------------------------------------------ waiting for states
#
# Tests synchronise on the state they need (a counter reached, bytes queued at a stalled
# server, a thread ready), never on a sleep of a guessed length. The limits below only
# turn a hang into a failure: nothing that works needs more than a fraction of them.

WAIT_LIMIT = 60.0


def wait_until(predicate, what: str, limit: float = WAIT_LIMIT, interval: float = 0.002):
    """Poll predicate() (from a plain thread) until it is true; AssertionError naming
    `what` if it is still false after `limit` seconds (a hang)."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(interval)


async def until(predicate, what: str, limit: float = WAIT_LIMIT, interval: float = 0.002):
    """wait_until() for a coroutine: the loop runs while it waits."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(interval)


async def poll(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Wait until predicate() is true; False if it still is not after `timeout` seconds
    (for ``assert await poll(...)``: a correctness check, not a timing one)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def bounded_by(default_limit: float):
    """``bounded = bounded_by(HANG)``: ``await bounded(aw)`` awaits aw with hang detection
    (asyncio.TimeoutError means: it hung), after `default_limit` seconds unless the call
    names another limit, ``bounded(aw, 30)``."""

    async def bounded(aw, limit: float = default_limit):
        return await asyncio.wait_for(aw, limit)

    return bounded


def sent_to(server, port: int, nbytes: int, limit: float = WAIT_LIMIT) -> None:
    """Wait until the (stalled) server holds at least nbytes unread from the client
    connection whose local port is `port`."""
    wait_until(lambda: server.unread_bytes().get(port, 0) >= nbytes,
               f"{nbytes} bytes from port {port} queued at the server", limit)


# ------------------------------------------------------------------ our RedisCache


#: The transports a test module runs its Redis tests over (``TRANSPORTS = ALL_TRANSPORTS``
#: in the module; the root conftest parametrizes its ``transport`` fixture with them):
#: "tcp" (plaintext) and "tls" (RedisServer(tls=True), the cache with ssl=True and the
#: test CA). A module without TRANSPORTS runs over "tcp" only; a test marked
#: ``@pytest.mark.transports("tcp")`` over the transports it names only.
ALL_TRANSPORTS = ("tcp", "tls")


def cache_maker(**defaults):
    """``make_cache = cache_maker(prefix=PREFIX, socket_timeout=...)``: then
    ``make_cache(server, **kw)`` is our RedisCache on 127.0.0.1 at the port of `server`
    (a RedisServer, a HostileServer, or a port number: one nothing listens on, say), with
    `defaults` for every keyword that kw does not give, and what the server's transport
    needs (``server.tls_kwargs``: ssl=True and the CA for a TLS server)."""

    def make(server, **kw) -> RedisCache:
        port = server if isinstance(server, int) else server.port
        tls = getattr(server, "tls_kwargs", {})
        return RedisCache(host="127.0.0.1", port=port, **{**tls, **defaults, **kw})

    return make


def error_records(caplog) -> list:
    """The ERROR records (and worse) of the caches' logger that caplog captured."""
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]


# ------------------------------------------------------------------ what Redis holds


def raw_json(server, key):
    """json.loads of what Redis holds under the full key `key` (which must be stored)."""
    data = server.command("GET", key)
    assert data is not None, f"{key!r} is not stored"
    return json.loads(data)


def hgetall(server, key) -> dict:
    """HGETALL as {str: int}."""
    flat = server.command("HGETALL", key)
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def reset_server_stats(server) -> None:
    server.command("CONFIG", "RESETSTAT")


def server_calls(server) -> dict[str, int]:
    """{command: calls} since the last CONFIG RESETSTAT (INFO commandstats; names in lower
    case), without the tests' own probes (INFO, CONFIG RESETSTAT, ECHO)."""
    info = server.command("INFO", "commandstats").decode()
    calls = {}
    for line in info.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, rest = line[len("cmdstat_"):].partition(":")
        fields = dict(kv.split("=", 1) for kv in rest.split(","))
        calls[name] = int(fields["calls"])
    for probe in ("info", "config|resetstat", "echo"):
        calls.pop(probe, None)
    return calls


def server_time_ms(server) -> int:
    """The server's clock (TIME), in milliseconds: what Redis computes expiries from."""
    seconds, micros = server.command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


class ExpiryWindow:
    """``with ExpiryWindow(server) as w: <write keys>``, then ``w.expiry(key, ttl_ms)``
    checks that key expires ttl_ms after the write: the absolute expiry Redis holds
    (PEXPIRETIME) lies within [server time before + ttl_ms, server time after + ttl_ms].
    No bound on how long the write took: a slow machine widens the window, it never
    fails the check."""

    def __init__(self, server) -> None:
        self.server = server

    def __enter__(self) -> "ExpiryWindow":
        self.before = server_time_ms(self.server)
        return self

    def __exit__(self, *exc) -> None:
        self.after = server_time_ms(self.server)

    def expiry(self, key: str, ttl_ms: int) -> int:
        """Check key's expiry (see the class); returns it. A key that is gone already
        (a short ttl on a slow machine) passes only if the server's clock shows that
        ttl_ms have passed since the write began: it did not expire early."""
        at = self.server.command("PEXPIRETIME", key)
        if at == -2:  # expired and removed: not before its time
            now = server_time_ms(self.server)
            assert now >= self.before + ttl_ms, (key, ttl_ms, now - self.before)
            return at
        assert self.before + ttl_ms <= at <= self.after + ttl_ms, (
            key, ttl_ms, at - self.before, at - self.after)
        return at


# ------------------------------------------------------------------ what Redis was sent

_MONITOR_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')
_MONITOR_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b",
                    '"': b'"', "\\": b"\\"}


def _monitor_unescape(text: str) -> str:
    """One MONITOR argument (sdscatrepr: printable ASCII as is, escapes for the rest)
    back to its text."""
    out, i = bytearray(), 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1]
            if nxt == "x":
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
                continue
            out += _MONITOR_ESCAPES[nxt]
            i += 2
            continue
        out += ch.encode("ascii")
        i += 1
    return out.decode("utf-8", "surrogateescape")


class Monitor:
    """The commands a server executes, as MONITOR reports them: ``with Monitor(server)
    as mon: ...``, then ``mon.wait_for(lambda cmd: ...)`` gives the first command (a
    list of str, the name upper-cased) matching, in execution order."""

    def __init__(self, server) -> None:
        self.server = server
        self.commands: list[list[str]] = []
        self._lock = threading.Condition()

    def __enter__(self) -> "Monitor":
        self.sock = self.server.connect(60)  # (TLS when the server serves TLS)
        self.file = self.sock.makefile("rb")
        if self.server.password:
            self.sock.sendall(b"AUTH %s\r\n" % self.server.password.encode())
            assert self.file.readline().startswith(b"+OK")
        self.sock.sendall(b"MONITOR\r\n")
        assert self.file.readline() == b"+OK\r\n"
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()
        self.sock.close()

    def _read_one(self) -> list[str]:
        line = self.file.readline()
        assert line.startswith(b"+"), line
        text = line[1:].decode("utf-8", "surrogateescape").rstrip("\r\n")
        args = [_monitor_unescape(m) for m in _MONITOR_ARG.findall(text.split("] ", 1)[1])]
        args[0] = args[0].upper()
        return args

    def wait_for(self, match) -> list[str]:
        """The first command executed since the monitor started (and not returned by an
        earlier wait_for) for which match(command) is true; reads until it comes (a
        socket timeout, 60 s, if it never does)."""
        while True:
            cmd = self._read_one()
            self.commands.append(cmd)
            if match(cmd):
                return cmd


# ------------------------------------------------------------------ fault tests
#
# RedisCache (redis/test_redis_faults.py) and MultiLevelCache (multilevel/
# test_multilevel_faults.py, test_multilevel_leaks.py) over a Redis that dies, stalls or
# refuses: the same bounds, and the same ways of waiting for a state.

TIMEOUT = 0.5    # socket_timeout and connect_timeout of the caches under test
HANG = 10.0      # an await taking this long (20x socket_timeout) is a hang
RECOVER = 15.0   # bound for "the cache works again" after a fault ends
STALL = 3600.0   # a stall the test ends itself (Stall.cancel()) once it has checked


@contextlib.contextmanager
def stalled(server):
    """The server stopped for the whole block (RedisServer.stall(): SIGSTOP, returns once
    the server has stopped; the kernel accepts connections and buffers what is sent,
    nothing is read or answered); the block's end resumes it."""
    stall = server.stall(STALL)
    try:
        yield stall
    finally:
        stall.cancel()


async def on_the_connection(cache: RedisCache, commands_before: int, n: int) -> None:
    """Wait until n more commands are on the cache's connection (stats()["commands"]
    counts a request's commands when the I/O thread puts it there): from then on a
    request is answered on that connection or fails with it, never sent again."""
    await until(lambda: cache.stats()["commands"] >= commands_before + n,
                f"{n} commands on the connection ({cache.stats()})", HANG)


async def wait_in_flight_zero(cache: RedisCache, limit: float = HANG) -> None:
    """Wait until no request of the cache is in flight (stats()["in_flight"])."""
    deadline = time.monotonic() + limit
    while cache.stats()["in_flight"] != 0:
        assert time.monotonic() < deadline, f"requests stuck in flight: {cache.stats()}"
        await asyncio.sleep(0.01)


def ml_counters(m) -> dict:
    """A MultiLevelCache's own counters (its stats() without the levels' dicts)."""
    s = m.stats()
    return {k: s[k] for k in ("l1_hits", "l2_hits", "misses", "l2_errors", "promotions")}


def awaitables_alive() -> int:
    """How many CacheAwaitable objects the collector can see."""
    return sum(1 for o in gc.get_objects() if type(o) is CacheAwaitable)


def fork() -> int:
    """os.fork() for a test about forking: 3.12+ warns (DeprecationWarning) about fork()
    in any process with threads, and ours has its I/O thread."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded",
                                DeprecationWarning)
        return os.fork()


def forked_ok(child) -> bool:
    """Run child() in a forked child process (fork() above); True when it returned a
    true value. The child always exits (os._exit), whatever happens in it."""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:  # the child
        code = 1
        try:
            code = 0 if child() else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read(1)
    os.waitpid(pid, 0)
    return answer == b"\0"


def refused(port: int) -> bool:
    """Does a connection to 127.0.0.1:port fail (nothing listens there)?"""
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def memory_growth(cache: RedisCache, work) -> tuple[int, int, int]:
    """What ``await work()`` leaves behind once its requests are done, after a
    collection: (Python bytes tracemalloc saw added, native heap bytes added —
    leakmeter.native_heap_bytes(), the I/O thread's requests, replies and buffers —,
    awaitables added). The caller warms up first (free lists, buffers at size)."""
    import tracemalloc

    from tests.support.leakmeter import native_heap_bytes

    await wait_in_flight_zero(cache)
    gc.collect()
    aw_before, native_before = awaitables_alive(), native_heap_bytes()
    tracemalloc.start()
    try:
        gc.collect()
        traced_before = tracemalloc.get_traced_memory()[0]
        await work()
        await wait_in_flight_zero(cache)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced_before
    finally:
        tracemalloc.stop()
    gc.collect()
    return traced, native_heap_bytes() - native_before, awaitables_alive() - aw_before


# ------------------------------------------------------------------ subprocesses


def script_command(name: str, *args) -> list[str]:
    """The command line of tests/scripts/<name>.py, run as the module
    ``tests.scripts.<name>``: from the repository root, it imports this working tree's
    package and the tests' support modules, as the suite does."""
    return [sys.executable, "-X", "faulthandler", "-m", f"tests.scripts.{name}",
            *map(str, args)]


def run_script(name: str, *args, timeout: float = 120.0, env: dict | None = None,
               server=None) -> subprocess.CompletedProcess:
    """Run tests/scripts/<name>.py with `args` in a fresh interpreter, from the repository
    root (crash and hang proof: still running after `timeout` seconds, it is killed and
    the test fails). With `server` (a RedisServer), the script's caches get what its
    transport needs (``server.tls_kwargs``, read by tests.scripts.server_kwargs())."""
    if server is not None:
        env = {**(os.environ if env is None else env),
               "BRUNO_TEST_SERVER_KWARGS": json.dumps(server.tls_kwargs)}
    try:
        return subprocess.run(script_command(name, *args), capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"tests/scripts/{name}.py hung (killed after {timeout}s); "
                    f"stderr: {e.stderr!r}")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run a short snippet (dedented) with `python *args -c code` in a fresh interpreter,
    from the repository root."""
    return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
