"""bruno_memory_c.testing (README "Testing your code against a real Redis").

RedisServer: the throwaway redis-server users test their code against, which this suite
uses too."""
from __future__ import annotations

import gc
import os
import socket

import pytest

from bruno_memory_c import RedisCache
from bruno_memory_c.testing import RedisServer, free_port
from tests.support import refused, sent_to


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


def thread_states(server) -> list[str]:
    """The scheduler state of each thread of the server process (T: stopped)."""
    states = []
    for tid in os.listdir(f"/proc/{server.proc.pid}/task"):
        with open(f"/proc/{server.proc.pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
        states.append(stat[stat.rindex(b")") + 2:][:1].decode())
    return states


def test_stall_has_begun_when_it_returns_and_ends_on_time(redis_server):
    """stall() returns once the server is stopped (every thread), not after a guess:
    a command sent then is buffered by the kernel and answered only when the stall
    ends (cancel() ends it; join() waits for that); a short stall ends by itself.

    (The buffered check runs under a stall that lasts until the test ends it: with
    one of 0.3 s, a loaded machine let the stall end before the check and the server
    read the bytes: seen under ASan beside a CI run.)"""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=30) as s:
        thread = redis_server.stall(3600)
        assert thread.is_alive()
        assert set(thread_states(redis_server)) == {"T"}
        s.sendall(b"PING\r\n")
        # sent, unread: the server reads nothing while stalled
        sent_to(redis_server, s.getsockname()[1], len(b"PING\r\n"))
        assert redis_server.unread_bytes()[s.getsockname()[1]] == len(b"PING\r\n")
        thread.cancel()
        thread.join(30)
        assert not thread.is_alive()
        assert s.makefile("rb").readline() == b"+PONG\r\n"  # answered after the stall
    thread = redis_server.stall(0.3)  # ends by itself
    thread.join(30)
    assert not thread.is_alive()
    assert redis_server.command("PING") == "PONG"
    assert "T" not in thread_states(redis_server)


def test_stall_accepts_connections_and_answers_nothing(redis_server):
    """While stalled the kernel still accepts connections; nothing is answered."""
    thread = redis_server.stall(60)
    try:
        with socket.create_connection(("127.0.0.1", redis_server.port), timeout=30) as s:
            s.sendall(b"PING\r\n")
            sent_to(redis_server, s.getsockname()[1], len(b"PING\r\n"))
            s.settimeout(0)
            with pytest.raises(BlockingIOError):  # no reply: nothing runs to send one
                s.recv(64)
            s.settimeout(30)
            thread.cancel()
            assert s.makefile("rb").readline() == b"+PONG\r\n"
    finally:
        thread.cancel()


def test_a_stall_can_be_ended_early_and_cancel_is_idempotent(redis_server):
    thread = redis_server.stall(3600)
    assert set(thread_states(redis_server)) == {"T"}
    thread.cancel()
    assert not thread.is_alive()  # cancel() waits for the stall to end
    assert redis_server.command("PING") == "PONG"
    thread.cancel()
    thread.join()
    assert redis_server.command("PING") == "PONG"
    with redis_server.stall(3600) as thread:  # ended with the block
        assert set(thread_states(redis_server)) == {"T"}
    assert not thread.is_alive()
    assert redis_server.command("PING") == "PONG"


def test_overlapping_stalls_end_with_the_last(redis_server):
    long = redis_server.stall(3600)
    short = redis_server.stall(0.05)
    short.join(30)
    assert not short.is_alive()
    assert set(thread_states(redis_server)) == {"T"}  # the long stall still holds it
    long.cancel()
    assert redis_server.command("PING") == "PONG"


@pytest.mark.parametrize("end", ["stop", "kill", "restart", "close"])
def test_stop_kill_restart_close_end_a_stall(end):
    """A stalled server can be stopped, killed, restarted and closed: each ends the
    stall (SIGTERM is not left pending behind SIGSTOP)."""
    server = RedisServer().start()
    try:
        thread = server.stall(3600)
        pid = server.proc.pid
        getattr(server, end)()
        assert not thread.is_alive()
        if end == "restart":
            assert server.command("PING") == "PONG"
        else:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # gone (and reaped)
    finally:
        server.close()


def test_a_stalled_server_killed_answers_nothing_more(redis_server):
    """kill() of a stalled server kills it stalled: what it was sent meanwhile is never
    answered (the stall is not ended first)."""
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=30) as s:
        thread = redis_server.stall(3600)
        s.sendall(b"PING\r\n")
        sent_to(redis_server, s.getsockname()[1], len(b"PING\r\n"))
        redis_server.kill()
        assert not thread.is_alive()
        try:
            reply = s.recv(64)
        except ConnectionResetError:  # unread data: the kernel resets the connection
            reply = b""
        assert reply == b""


def test_stalling_a_server_that_is_not_running_raises(redis_server):
    redis_server.kill()
    with pytest.raises(RuntimeError, match="not running"):
        redis_server.stall(1)


def test_unread_bytes_lists_each_client_connection(redis_server):
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=30) as a, \
            socket.create_connection(("127.0.0.1", redis_server.port), timeout=30) as b:
        a.sendall(b"PING\r\n")
        assert a.makefile("rb").readline() == b"+PONG\r\n"
        thread = redis_server.stall(3600)
        try:
            b.sendall(b"*1\r\n$4\r\nPING\r\n")
            sent_to(redis_server, b.getsockname()[1], len(b"*1\r\n$4\r\nPING\r\n"))
            unread = redis_server.unread_bytes()
            assert unread[a.getsockname()[1]] == 0
            assert unread[b.getsockname()[1]] == len(b"*1\r\n$4\r\nPING\r\n")
        finally:
            thread.cancel()
        assert b.makefile("rb").readline() == b"+PONG\r\n"


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
