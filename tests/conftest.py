"""Shared test machinery: every async test runs under the default asyncio loop and uvloop.

pytest-asyncio 1.5 offers the ``pytest_asyncio_loop_factories`` hook for this (overriding
the ``event_loop_policy`` fixture is deprecated there and warns): each async test is
parametrized once per factory, with the factory names as test ids, so that
``test_x[asyncio]`` and ``test_x[uvloop]`` are both collected and run.

Synchronous tests that create their own loops (``asyncio.run``, ``asyncio.Runner``,
start()/stop() across loops) take the ``loop_factory`` / ``loop_name`` fixtures, which are
parametrized the same way.
"""
import asyncio
import contextlib
import re
import socket
import threading
import time

import pytest
import uvloop

# The `redis_server` fixture: a real redis-server on a free port, per test.
pytest_plugins = ["bruno_memory_c.testing"]


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


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio hook: run every async test once per event-loop implementation."""
    return LOOP_FACTORIES


def _factory_name(factory) -> str:
    for name, f in LOOP_FACTORIES.items():
        if f is factory:
            return name
    raise AssertionError(f"unknown loop factory {factory!r}")


@pytest.fixture
def async_loop_name(request) -> str:
    """For an async test: the name ("asyncio"/"uvloop") of the loop it runs under."""
    callspec = getattr(request.node, "callspec", None)
    assert callspec is not None, "async test was not parametrized by loop factory"
    return _factory_name(callspec.params["_asyncio_loop_factory"])


@pytest.fixture(params=list(LOOP_FACTORIES), ids=list(LOOP_FACTORIES))
def loop_name(request) -> str:
    """For a synchronous test: the name of the loop implementation to use."""
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    """For a synchronous test: a callable creating a new loop of the selected kind."""
    return LOOP_FACTORIES[loop_name]


@pytest.fixture
def run_in_new_loop(loop_factory):
    """run_in_new_loop(coro_or_awaitable) -> result, on a fresh loop that is closed after."""

    def run(main):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main)

    return run


def drive(aw):
    """Run a cache awaitable synchronously (no event loop): it must finish on its first
    send(). Test modules import it: ``from conftest import drive``."""
    try:
        aw.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError(f"{aw!r} suspended instead of completing")


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections, held for the whole test so that no
    other test worker's server can take it meanwhile (see testing.refused_port)."""
    from bruno_memory_c.testing import refused_port  # (a plugin: imported by pytest)

    with refused_port() as port:
        yield port


class ReservedPort:
    """A loopback port that refuses connections until release(), for a test that
    later starts a server of its own on it (nobody else's server can take it first)."""

    def __init__(self) -> None:
        from bruno_memory_c.testing import refused_port

        self._hold = contextlib.ExitStack()
        self.port = self._hold.enter_context(refused_port())

    def release(self) -> None:
        self._hold.close()


@pytest.fixture
def reserved_port():
    reserved = ReservedPort()
    yield reserved
    reserved.release()


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


def sent_to(server, port: int, nbytes: int, limit: float = WAIT_LIMIT) -> None:
    """Wait until the (stalled) server holds at least nbytes unread from the client
    connection whose local port is `port`."""
    wait_until(lambda: server.unread_bytes().get(port, 0) >= nbytes,
               f"{nbytes} bytes from port {port} queued at the server", limit)


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
        self.sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=60)
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
