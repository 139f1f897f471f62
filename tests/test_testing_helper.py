"""bruno_memory_c.testing: the throwaway redis-server users test their code against."""
from __future__ import annotations

import gc
import os
import socket

import pytest

from bruno_memory_c import RedisCache
from bruno_memory_c.testing import RedisServer, free_port


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_starts_serves_and_cleans_up():
    server = RedisServer()
    directory = server.dir
    with server:
        assert os.path.isdir(directory)
        assert server.command("PING") == "PONG"
        assert server.command("SET", "a", "1") == "OK"
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        pid = server.proc.pid
    assert server.proc is None
    assert not os.path.exists(directory)
    assert refused(server.port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_with_block_cleans_up_after_an_exception():
    server = RedisServer()
    with pytest.raises(KeyError):
        with server:
            raise KeyError("boom")
    assert not os.path.exists(server.dir) and refused(server.port)


def test_a_server_that_cannot_start_leaves_nothing():
    server = RedisServer(extra_args=("--no-such-option", "x"))
    with pytest.raises(RuntimeError, match="exited"):
        with server:
            pass
    assert not os.path.exists(server.dir)


def test_a_server_dropped_without_close_is_stopped_and_removed():
    server = RedisServer().start()
    directory, port, proc = server.dir, server.port, server.proc
    del server
    gc.collect()
    assert proc.poll() is not None
    assert not os.path.exists(directory) and refused(port)


def test_close_is_idempotent_and_kill_restart_keep_the_port():
    server = RedisServer().start()
    try:
        port = server.port
        server.command("SET", "k", "v")
        server.kill()
        assert refused(port)
        server.restart()
        assert server.port == port and server.command("PING") == "PONG"
        assert server.command("GET", "k") is None  # no persistence
    finally:
        server.close()
        server.close()
    assert not os.path.exists(server.dir)


def test_password_and_unix_socket():
    with RedisServer(password="s3cret", unix_socket=True) as server:
        assert server.command("PING") == "PONG"  # command() authenticates
        assert os.path.exists(server.unix_path)
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
    assert not os.path.exists(server.dir)


def test_free_port_is_free():
    port = free_port()
    assert 1024 < port < 65536 and refused(port)


async def test_fixture_gives_a_running_server_a_cache_can_use(redis_server):
    async with RedisCache.from_url(redis_server.url, prefix="helper:") as cache:
        await cache.set("k", [1, 2])
        assert await cache.get("k") == [1, 2]
    assert redis_server.command("GET", "helper:k") == b"[1, 2]"  # bulk replies: bytes


def test_stall_blocks_the_server_not_the_caller(redis_server):
    thread = redis_server.stall(0.3)
    assert thread.is_alive()
    thread.join(5)
    assert redis_server.command("PING") == "PONG"


def test_a_taken_port_is_never_mistaken_for_our_server():
    with RedisServer() as theirs:
        theirs.command("SET", "theirs", "1")
        # A given port that is taken: a clear error, not someone else's server.
        with pytest.raises(RuntimeError, match="in use"):
            with RedisServer(port=theirs.port):
                pass
        # A chosen port that turns out taken (the race after free_port()): another.
        ours = RedisServer()
        ours.port = theirs.port
        with ours:
            assert ours.port != theirs.port
            assert ours.command("GET", "theirs") is None
        assert theirs.command("GET", "theirs") == b"1"


def test_a_failed_start_says_why():
    with pytest.raises(RuntimeError, match="no-such-option|Bad directive|FATAL"):
        with RedisServer(extra_args=("--no-such-option", "x")):
            pass


# A password that needs escaping everywhere: in a URL (@ : / % # ?), in redis.conf
# (quote, backslash, space), and beyond ASCII.
AWKWARD_PASSWORD = 'p@ss:w/rd%#? "q\\u\' é'


def test_password_is_not_on_the_server_command_line():
    """The password goes to the server in a configuration file readable by us only, not
    on its command line, which every local user can read (ps, /proc/<pid>/cmdline).
    With --set-proc-title no the server keeps its argv as given, so /proc shows
    exactly what it was started with."""
    with RedisServer(password=AWKWARD_PASSWORD,
                     extra_args=("--set-proc-title", "no")) as server:
        assert server.command("PING") == "PONG"
        with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
            cmdline = f.read()
        assert b"--requirepass" not in cmdline
        for secret in (AWKWARD_PASSWORD, "p@ss", "w/rd"):
            assert secret.encode() not in cmdline, cmdline
            assert not any(secret in arg for arg in server.proc.args), server.proc.args
        conf = os.path.join(server.dir, "redis.conf")
        assert oct(os.stat(conf).st_mode & 0o777) == oct(0o600)
        assert oct(os.stat(server.dir).st_mode & 0o077) == oct(0)  # a private directory
        # The server really requires that password.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"PING\r\n")
            assert s.makefile("rb").readline().startswith(b"-NOAUTH")
        assert server.command("CONFIG", "GET", "requirepass") == [
            b"requirepass", AWKWARD_PASSWORD.encode()]


async def test_url_escapes_the_password():
    """server.url percent-encodes the password, so that from_url (which decodes it)
    connects with exactly that password."""
    with RedisServer(password=AWKWARD_PASSWORD) as server:
        assert AWKWARD_PASSWORD not in server.url
        async with RedisCache.from_url(server.url, prefix="esc:") as cache:
            assert cache.password == AWKWARD_PASSWORD
            await cache.set("k", {"v": 1})
            assert await cache.get("k") == {"v": 1}
        assert server.command("GET", "esc:k") == b'{"v": 1}'


def test_password_survives_restart():
    """The configuration file is written again at each start: a restarted server asks
    for the current password."""
    with RedisServer(password="first") as server:
        server.kill()
        server.password = AWKWARD_PASSWORD
        server.restart()
        assert server.command("CONFIG", "GET", "requirepass") == [
            b"requirepass", AWKWARD_PASSWORD.encode()]
