"""RedisCache against a real redis-server: its contract (README "RedisCache API").

Also the reference semantics of bruno_memory.utils.cache.RedisCache (README
"Differences from bruno-memory"; ARCHITECTURE "RedisCache: the picture").

Every test that talks to Redis gets a fresh server (the ``redis_server`` fixture from
bruno_memory_c.testing) and checks what was stored with raw RESP commands
(``redis_server.command(...)``), independently of the cache under test. Async tests run
under both asyncio and uvloop (tests/conftest.py). Nothing asserts on how long anything
takes: waits only poll until a condition holds (with a generous deadline) or let TTLs
pass. An expiry is checked exactly, whatever the machine's speed: the command the cache
sent (MONITOR), and the absolute expiry Redis holds (PEXPIRETIME) against the server's
clock read before and after the write (tests.support.ExpiryWindow).
"""
from __future__ import annotations

import asyncio
import decimal
import fractions
import gc
import inspect
import json
import logging
import math
import os
import sys
import time
import unittest.mock
import urllib.parse
import weakref

import pytest
import pytest_asyncio

import bruno_memory_c
from bruno_memory_c import CacheError, CacheInterface, RedisCache
from bruno_memory_c.testing import RedisServer
from tests.support import (
    error_records, fork, hgetall, poll, raw_json, until, ALL_TRANSPORTS, ExpiryWindow,
    LOGGER, Monitor,
)

PREFIX = "t:"
#: Every test talking to a redis_server runs over plaintext and over TLS (conftest.py).
TRANSPORTS = ALL_TRANSPORTS
MB = 1024 * 1024


# ---------------------------------------------------------------------- helpers


def raw_get(server, key):
    """The stored bytes under the full Redis key (None when absent)."""
    return server.command("GET", key)


def raw_exists(server, key) -> bool:
    return server.command("EXISTS", key) == 1


def raw_keys(server, pattern="*") -> set:
    return set(server.command("KEYS", pattern))


def keyspace(server) -> dict:
    """INFO keyspace as {db number: key count}."""
    info = server.command("INFO", "keyspace").decode()
    out = {}
    for line in info.splitlines():
        if line.startswith("db"):
            name, _, rest = line.partition(":")
            fields = dict(kv.split("=") for kv in rest.split(","))
            out[int(name[2:])] = int(fields["keys"])
    return out


def make(server, **kw) -> RedisCache:
    """From the server's URL: redis://, or rediss://...?ssl_ca_certs=... over TLS."""
    kw.setdefault("prefix", PREFIX)
    return RedisCache.from_url(server.url, **kw)


def server_url(server, userinfo: str = "", db: int = 0) -> str:
    """A URL of the server with these credentials and db (rediss:// naming the CA when
    the server serves TLS)."""
    if server.tls is None:
        return f"redis://{userinfo}127.0.0.1:{server.port}/{db}"
    ca = urllib.parse.quote(server.tls.ca_file, safe="/")
    return f"rediss://{userinfo}127.0.0.1:{server.port}/{db}?ssl_ca_certs={ca}"


@pytest_asyncio.fixture
async def cache(redis_server):
    """A connected RedisCache with prefix PREFIX on a fresh server."""
    c = make(redis_server)
    await c.connect()
    yield c
    await c.disconnect()


# ---------------------------------------------------------------------- module


def test_exported():
    assert bruno_memory_c.RedisCache is RedisCache
    assert bruno_memory_c.REDIS_AVAILABLE is True
    assert issubclass(RedisCache, CacheInterface)
    assert isinstance(RedisCache(), CacheInterface)


# ---------------------------------------------------------------------- constructor


def test_defaults():
    c = RedisCache()
    assert c.host == "localhost"
    assert c.port == 6379
    assert c.db == 0
    assert c.password is None
    assert c.username is None
    assert c.prefix == "bruno:cache:"
    assert c.default_ttl == 3600
    assert c.max_connections == 10
    assert c.pool_size is None
    assert c.max_overflow is None
    assert c.socket_timeout == 5.0
    assert c.connect_timeout == 5.0
    assert c.unix_socket_path is None
    assert c.stats_key == "bruno:cache:stats"
    assert c.connected is False
    assert c._connected is False


def test_positional_arguments_in_reference_order():
    c = RedisCache("redis.example", 1234, 3, "pw", "app:", 10, 20)
    assert (c.host, c.port, c.db, c.password, c.prefix, c.default_ttl, c.max_connections) == (
        "redis.example", 1234, 3, "pw", "app:", 10, 20)
    assert c.stats_key == "app:stats"


def test_keyword_arguments():
    c = RedisCache(host="h", port=1, db=2, password="p", prefix="x", default_ttl=None,
                   max_connections=3, username="u", pool_size=4, max_overflow=0,
                   socket_timeout=1.5, connect_timeout=2.5, unix_socket_path="/tmp/r.sock")
    assert c.host == "h" and c.port == 1 and c.db == 2
    assert c.password == "p" and c.username == "u"
    assert c.prefix == "x" and c.default_ttl is None
    assert c.max_connections == 3 and c.pool_size == 4 and c.max_overflow == 0
    assert c.socket_timeout == 1.5 and c.connect_timeout == 2.5
    assert c.unix_socket_path == "/tmp/r.sock"
    assert c.stats_key == "xstats"


def test_new_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        RedisCache("h", 1, 0, None, "p:", 1, 1, "user")


def test_unknown_keyword():
    with pytest.raises(TypeError):
        RedisCache(hostname="x")


@pytest.mark.parametrize("default_ttl", [None, 0, 1, 2.5, 10**6, decimal.Decimal("1.5")])
def test_accepted_default_ttl(default_ttl):
    assert RedisCache(default_ttl=default_ttl).default_ttl == default_ttl


def test_timeouts_none_means_no_limit():
    c = RedisCache(socket_timeout=None, connect_timeout=None)
    assert c.socket_timeout is None and c.connect_timeout is None


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"port": 0}, ValueError),
        ({"port": 65536}, ValueError),
        ({"port": -1}, ValueError),
        ({"port": "6379"}, TypeError),
        ({"port": 6379.0}, TypeError),
        ({"port": None}, TypeError),
        ({"db": -1}, ValueError),
        ({"db": "0"}, TypeError),
        ({"db": 0.0}, TypeError),
        ({"host": 1}, TypeError),
        ({"host": None}, TypeError),
        ({"host": b"localhost"}, TypeError),
        ({"prefix": None}, TypeError),
        ({"prefix": b"p:"}, TypeError),
        ({"prefix": 1}, TypeError),
        ({"password": 1}, TypeError),
        ({"password": b"pw"}, TypeError),
        ({"username": 1}, TypeError),
        ({"unix_socket_path": 1}, TypeError),
        ({"socket_timeout": 0}, ValueError),
        ({"socket_timeout": -1}, ValueError),
        ({"socket_timeout": float("nan")}, ValueError),
        ({"socket_timeout": "5"}, TypeError),
        ({"connect_timeout": 0}, ValueError),
        ({"connect_timeout": -0.5}, ValueError),
        ({"connect_timeout": "5"}, TypeError),
        ({"default_ttl": -1}, ValueError),
        ({"default_ttl": -0.5}, ValueError),
        ({"default_ttl": float("nan")}, ValueError),
        ({"default_ttl": "10"}, TypeError),
        ({"default_ttl": [10]}, TypeError),
        ({"max_connections": 0}, ValueError),
        ({"max_connections": "10"}, TypeError),
        ({"pool_size": 0}, ValueError),
        ({"max_overflow": -1}, ValueError),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        RedisCache(**kwargs)


def test_repr():
    r = repr(RedisCache(host="127.0.0.1", port=4242, db=2, prefix="pp:"))
    assert "RedisCache" in r and "127.0.0.1" in r and "4242" in r and "pp:" in r
    assert "/tmp/x.sock" in repr(RedisCache(unix_socket_path="/tmp/x.sock"))


def test_constructing_does_not_connect(closed_port):
    c = RedisCache(host="127.0.0.1", port=closed_port)
    assert c.connected is False
    assert c.stats()["connected"] is False


# ---------------------------------------------------------------------- from_url


def test_from_url_host_port_db():
    c = RedisCache.from_url("redis://10.1.2.3:1234/5")
    assert (c.host, c.port, c.db) == ("10.1.2.3", 1234, 5)
    assert c.password is None and c.username is None and c.unix_socket_path is None
    assert c.prefix == "bruno:cache:" and c.default_ttl == 3600


def test_from_url_defaults():
    c = RedisCache.from_url("redis://somehost")
    assert (c.host, c.port, c.db) == ("somehost", 6379, 0)
    c = RedisCache.from_url("redis://somehost/")
    assert c.db == 0


def test_from_url_credentials():
    c = RedisCache.from_url("redis://alice:s3cret@h:1/2")
    assert (c.username, c.password, c.host, c.port, c.db) == ("alice", "s3cret", "h", 1, 2)
    c = RedisCache.from_url("redis://:s3cret@h")
    assert c.username is None and c.password == "s3cret"


def test_from_url_percent_encoded_password():
    c = RedisCache.from_url("redis://bob:p%40ss%3Aw%2Fd@h")
    assert c.username == "bob" and c.password == "p@ss:w/d"


def test_from_url_unix():
    c = RedisCache.from_url("unix:///var/run/redis.sock?db=3")
    assert c.unix_socket_path == "/var/run/redis.sock"
    assert c.db == 3
    c = RedisCache.from_url("unix:///var/run/redis.sock")
    assert c.db == 0


def test_from_url_keywords_override_url():
    c = RedisCache.from_url("redis://u:p@h:1/2", db=4, password="other", port=7,
                            prefix="x:", default_ttl=None, socket_timeout=1.0)
    assert (c.host, c.port, c.db, c.username, c.password) == ("h", 7, 4, "u", "other")
    assert c.prefix == "x:" and c.default_ttl is None and c.socket_timeout == 1.0


@pytest.mark.parametrize("url, exc", [
    ("http://h:1/0", ValueError),
    ("h:1", ValueError),
    ("redis://h:99999/0", ValueError),
    ("redis://h/notanumber", ValueError),
    ("redis://h/-1", ValueError),
    (b"redis://h", TypeError),
    (None, TypeError),
])
def test_from_url_bad(url, exc):
    with pytest.raises(exc):
        RedisCache.from_url(url)


def test_from_url_validates_keywords():
    with pytest.raises(ValueError):
        RedisCache.from_url("redis://h", default_ttl=-1)
    with pytest.raises(TypeError):
        RedisCache.from_url("redis://h", bogus=1)
    with pytest.raises(TypeError):
        RedisCache.from_url()


async def test_from_url_db_selects_database(redis_server):
    url = server_url(redis_server, db=5)
    async with RedisCache.from_url(url, prefix=PREFIX) as c5:
        await c5.set("k", "in five")
        assert await c5.get("k") == "in five"
    assert keyspace(redis_server) == {5: 2}  # k and the statistics hash
    assert not raw_exists(redis_server, PREFIX + "k")  # raw commands use db 0
    async with RedisCache.from_url(server_url(redis_server, db=0), prefix=PREFIX) as c0:
        assert await c0.get("k") is None
        assert await c0.exists("k") is False


async def test_from_url_unix_socket_with_db():
    with RedisServer(unix_socket=True) as server:
        url = f"unix://{server.unix_path}?db=2"
        async with RedisCache.from_url(url, prefix=PREFIX) as c:
            assert c.unix_socket_path == server.unix_path and c.db == 2
            await c.set("k", [1, 2])
            assert await c.get("k") == [1, 2]
        assert keyspace(server) == {2: 2}  # k and the statistics hash


async def test_constructor_unix_socket_path():
    with RedisServer(unix_socket=True) as server:
        c = RedisCache(unix_socket_path=server.unix_path, prefix=PREFIX)
        await c.set("k", "via unix")
        assert raw_json(server, PREFIX + "k") == "via unix"
        await c.disconnect()


async def test_unix_socket_missing(tmp_path):
    c = RedisCache(unix_socket_path=str(tmp_path / "nothing.sock"), connect_timeout=2)
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await c.connect()
    assert c.connected is False


# ---------------------------------------------------------------------- auth


async def test_password_right_wrong_missing(server_options):
    with RedisServer(password="s3cret", **server_options) as server:
        good = make(server)  # server.url carries :s3cret@
        await good.connect()
        assert good.connected
        await good.set("k", 1)
        assert raw_json(server, PREFIX + "k") == 1
        await good.disconnect()

        wrong = RedisCache(host="127.0.0.1", port=server.port, password="nope",
                           **server.tls_kwargs)
        with pytest.raises(CacheError, match="^Redis connection failed: .*WRONGPASS"):
            await wrong.connect()
        assert wrong.connected is False

        missing = RedisCache(host="127.0.0.1", port=server.port, **server.tls_kwargs)
        with pytest.raises(CacheError, match="^Redis connection failed: .*NOAUTH"):
            await missing.connect()

        # a data method that has to connect raises the connection failure too
        with pytest.raises(CacheError, match="^Redis connection failed: "):
            await RedisCache(host="127.0.0.1", port=server.port, password="nope",
                             **server.tls_kwargs).get("k")


async def test_username_and_password(server_options):
    with RedisServer(password="s3cret", **server_options) as server:
        server.command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "+@all")
        url = server_url(server, "alice:alicepw@")
        async with RedisCache.from_url(url, prefix=PREFIX) as c:
            await c.set("k", "alice was here")
            assert await c.get("k") == "alice was here"
        async with RedisCache.from_url(server_url(server, "default:s3cret@")) as c:
            assert c.connected
        bad = RedisCache.from_url(server_url(server, "alice:wrong@"))
        with pytest.raises(CacheError, match="^Redis connection failed: "):
            await bad.connect()


async def test_percent_encoded_password_in_url(server_options):
    password = "p@ss:w/rd %?#"
    with RedisServer(password=password, **server_options) as server:
        url = server_url(server, f":{urllib.parse.quote(password, safe='')}@")
        async with RedisCache.from_url(url, prefix=PREFIX) as c:
            assert c.password == password
            await c.set("k", 1)
        assert raw_json(server, PREFIX + "k") == 1


async def test_localhost_name(redis_server):
    # (over TLS: the name is sent (SNI) and checked against the certificate)
    async with RedisCache(host="localhost", port=redis_server.port, prefix=PREFIX,
                          **redis_server.tls_kwargs) as c:
        await c.set("k", "via localhost")
    assert raw_json(redis_server, PREFIX + "k") == "via localhost"


async def test_db_out_of_range(redis_server):
    c = make(redis_server, db=16)  # the server has databases 0..15
    with pytest.raises(CacheError, match="^Redis connection failed: .*DB index"):
        await c.connect()
    assert c.connected is False
    async with make(redis_server, db=15) as c15:
        await c15.set("k", 1)
    assert keyspace(redis_server) == {15: 1}


async def test_unresolvable_host():
    c = RedisCache(host="nonexistent.invalid", port=6379, connect_timeout=2)
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await c.connect()


async def test_unix_socket_path_too_long():
    c = RedisCache(unix_socket_path="/tmp/" + "x" * 200, connect_timeout=2)
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await c.connect()


@pytest.mark.parametrize("field", ["password", "username", "host", "unix_socket_path"])
async def test_embedded_nul_is_not_truncated(field):
    """Regression: host/password/username/socket path once went to the I/O thread as
    C strings, so "s3cret\\x00garbage" authenticated as "s3cret"."""
    with RedisServer(password="s3cret", unix_socket=True) as server:
        server.command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "+@all")
        kw = {"host": "127.0.0.1", "port": server.port, "password": "s3cret"}
        if field == "password":
            kw["password"] = "s3cret\x00garbage"
        elif field == "username":
            kw.update(username="alice\x00garbage", password="alicepw")
        elif field == "host":
            kw["host"] = "127.0.0.1\x00garbage"
        else:
            kw["unix_socket_path"] = server.unix_path + "\x00garbage"
        try:
            c = RedisCache(**kw)  # a ValueError here is fine
        except ValueError:
            return
        # otherwise the value must be used as given, which cannot connect
        with pytest.raises((CacheError, ValueError)):
            await c.connect()


# ---------------------------------------------------------------------- connect


async def test_connect_and_disconnect_are_idempotent(redis_server):
    c = make(redis_server)
    await c.disconnect()  # never connected: fine
    assert c.connected is False
    assert await c.connect() is None
    assert c.connected is True and c._connected is True
    assert await c.connect() is None
    assert c.connected is True
    assert await c.disconnect() is None
    assert c.connected is False and c._connected is False
    assert await c.disconnect() is None
    assert c.connected is False
    # and again
    await c.connect()
    await c.set("k", 1)
    assert await c.get("k") == 1
    await c.disconnect()


async def test_concurrent_connects(redis_server):
    c = make(redis_server)
    assert await asyncio.gather(*(c.connect() for _ in range(20))) == [None] * 20
    assert c.connected
    await c.disconnect()


async def test_async_with(redis_server):
    c = make(redis_server)
    async with c as entered:
        assert entered is c
        assert c.connected
        await c.set("k", "v")
    assert c.connected is False
    assert raw_json(redis_server, PREFIX + "k") == "v"


async def test_async_with_twice(redis_server):
    c = make(redis_server)
    async with c:
        await c.set("k", 1)
    async with c:
        assert await c.get("k") == 1
    assert c.connected is False


async def test_async_with_already_connected(cache):
    async with cache as c:
        assert c is cache and c.connected
    assert cache.connected is False


async def test_async_with_disconnects_on_error(redis_server):
    c = make(redis_server)
    with pytest.raises(KeyError):
        async with c:
            assert c.connected
            raise KeyError("boom")
    assert c.connected is False


async def test_async_with_connection_failure(closed_port):
    c = RedisCache(host="127.0.0.1", port=closed_port, connect_timeout=2)
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        async with c:
            pytest.fail("body must not run")


async def test_closed_port(closed_port):
    c = RedisCache(host="127.0.0.1", port=closed_port, connect_timeout=2)
    with pytest.raises(CacheError, match="^Redis connection failed: ") as info:
        await c.connect()
    assert str(closed_port) in str(info.value)
    assert c.connected is False
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await c.connect()  # still failing, still the same error


@pytest.mark.parametrize("method, args", [
    ("get", ("k",)),
    ("set", ("k", 1)),
    ("delete", ("k",)),
    ("exists", ("k",)),
    ("get_many", (["a", "b"],)),
    ("set_many", ({"a": 1},)),
    ("clear", ()),
    ("get_stats", ()),
])
async def test_data_method_on_closed_port_raises_connection_failure(closed_port, method, args):
    c = RedisCache(host="127.0.0.1", port=closed_port, connect_timeout=2)
    with pytest.raises(CacheError, match="^Redis connection failed: "):
        await getattr(c, method)(*args)
    assert c.connected is False


async def test_connect_after_server_appears(reserved_port, server_options):
    tls = {}
    if server_options:  # the certificates the server will have
        tls = {"ssl": True, "ssl_ca_certs": server_options["tls_files"].ca_file}
    c = RedisCache(host="127.0.0.1", port=reserved_port.port, prefix=PREFIX, connect_timeout=2,
                   **tls)
    with pytest.raises(CacheError):
        await c.connect()
    reserved_port.release()
    with RedisServer(port=reserved_port.port, **server_options) as server:
        ok = False
        deadline = time.monotonic() + 10
        while not ok:  # a retry right after the failure may still be backing off
            try:
                await c.connect()
                ok = True
            except CacheError:
                assert time.monotonic() < deadline, "never connected"
                await asyncio.sleep(0.1)
        await c.set("k", 1)
        assert raw_json(server, PREFIX + "k") == 1
        await c.disconnect()


@pytest.mark.parametrize("method, args, result", [
    ("get", ("k",), None),
    ("set", ("k", 1), None),
    ("delete", ("k",), False),
    ("exists", ("k",), False),
    ("get_many", (["a", "b"],), {}),
    ("set_many", ({"a": 1},), None),
    ("clear", (), None),
])
async def test_data_method_connects_first(redis_server, method, args, result):
    c = make(redis_server)
    assert c.connected is False
    assert await getattr(c, method)(*args) == result
    assert c.connected is True
    await c.disconnect()


async def test_get_stats_connects_first(redis_server):
    c = make(redis_server)
    stats = await c.get_stats()
    assert stats["connected"] is True
    assert c.connected is True
    await c.disconnect()


async def test_data_method_after_disconnect_reconnects(cache, redis_server):
    await cache.set("k", 1)
    await cache.disconnect()
    assert cache.connected is False
    assert await cache.get("k") == 1
    assert cache.connected is True


# ---------------------------------------------------------------------- get / set / delete / exists


@pytest.mark.topologies("standalone", "cluster")
async def test_set_get(cache, redis_server):
    assert await cache.set("k", {"a": 1}) is None
    assert raw_get(redis_server, PREFIX + "k") == b'{"a": 1}'
    assert await cache.get("k") == {"a": 1}
    assert await cache.get("missing") is None


@pytest.mark.topologies("standalone", "cluster")
async def test_overwrite(cache, redis_server):
    await cache.set("k", 1)
    await cache.set("k", "two")
    assert await cache.get("k") == "two"
    assert raw_json(redis_server, PREFIX + "k") == "two"


@pytest.mark.topologies("standalone", "cluster")
async def test_get_reads_what_others_wrote(cache, redis_server):
    redis_server.command("SET", PREFIX + "k", '{"from": ["raw", 1]}')
    assert await cache.get("k") == {"from": ["raw", 1]}


@pytest.mark.topologies("standalone", "cluster")
async def test_get_of_stored_null_is_a_hit(cache):
    await cache.set("k", None)
    assert await cache.get("k") is None
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 0
    assert await cache.exists("k") is True


@pytest.mark.topologies("standalone", "cluster")
async def test_delete(cache, redis_server):
    await cache.set("k", 1)
    assert await cache.delete("k") is True
    assert not raw_exists(redis_server, PREFIX + "k")
    assert await cache.delete("k") is False
    assert await cache.get("k") is None


@pytest.mark.topologies("standalone", "cluster")
async def test_exists(cache, redis_server):
    assert await cache.exists("k") is False
    await cache.set("k", 0)
    assert await cache.exists("k") is True
    redis_server.command("DEL", PREFIX + "k")
    assert await cache.exists("k") is False


@pytest.mark.topologies("standalone", "cluster")
async def test_exists_does_not_count(cache):
    await cache.set("k", 1)
    await cache.exists("k")
    await cache.exists("nope")
    assert cache.stats()["hits"] == 0 and cache.stats()["misses"] == 0


async def test_reference_keyword_names(cache):
    assert await cache.set(key="k", value=[1], ttl=100) is None
    assert await cache.get(key="k") == [1]
    assert await cache.exists(key="k") is True
    assert await cache.get_many(keys=["k", "z"]) == {"k": [1]}
    assert await cache.set_many(items={"a": 1, "b": 2}, ttl=100) is None
    assert await cache.get_many(keys=("a", "b")) == {"a": 1, "b": 2}
    assert await cache.delete(key="k") is True


@pytest.mark.parametrize("call", [
    lambda c: c.get(),
    lambda c: c.get("a", "b"),
    lambda c: c.get(k="a"),
    lambda c: c.set("a"),
    lambda c: c.set("a", 1, 2, 3),
    lambda c: c.delete(),
    lambda c: c.exists(),
    lambda c: c.get_many(),
    lambda c: c.set_many(),
    lambda c: c.clear(1),
    lambda c: c.get_stats(1),
])
def test_bad_call_signatures(call):
    with pytest.raises(TypeError):
        call(RedisCache())


# ---------------------------------------------------------------------- keys


class Formatted:
    """format() and str() differ: the reference's f"{prefix}{key}" uses format()."""

    def __format__(self, spec):
        return "by-format"

    def __str__(self):
        return "by-str"


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("key", [
    "plain",
    "",
    "with space",
    "new\nline",
    "crlf\r\nkey",
    "tab\tkey",
    "nul\x00byte",
    "ключ",
    "emoji 😀🎉",
    "glob*?[]\\",
    "x" * 10_000,
    42,
    -7,
    1.5,
    True,
    None,
    (1, "a"),
    frozenset(),
    b"bytes",
], ids=lambda k: repr(k)[:30])
@pytest.mark.topologies("standalone", "cluster")
async def test_keys(cache, redis_server, key):
    full = PREFIX + format(key)
    await cache.set(key, {"key": repr(key)})
    assert raw_json(redis_server, full) == {"key": repr(key)}
    assert await cache.get(key) == {"key": repr(key)}
    assert await cache.exists(key) is True
    assert await cache.get_many([key]) == {key: {"key": repr(key)}}
    assert await cache.delete(key) is True
    assert not raw_exists(redis_server, full)


@pytest.mark.topologies("standalone", "cluster")
async def test_key_is_str_of_object(cache, redis_server):
    await cache.set(42, "int")
    assert raw_json(redis_server, PREFIX + "42") == "int"
    assert await cache.get("42") == "int"  # same Redis key as the str
    await cache.set((1, 2), "tuple")
    assert raw_json(redis_server, PREFIX + "(1, 2)") == "tuple"
    assert await cache.get("(1, 2)") == "tuple"


@pytest.mark.topologies("standalone", "cluster")
async def test_key_uses_format_like_the_reference(cache, redis_server):
    await cache.set(Formatted(), 1)
    assert raw_json(redis_server, PREFIX + "by-format") == 1
    assert not raw_exists(redis_server, PREFIX + "by-str")
    assert await cache.get(Formatted()) == 1


@pytest.mark.topologies("standalone", "cluster")
async def test_unicode_prefix(redis_server):
    async with make(redis_server, prefix="préfixe☃:") as c:
        await c.set("clé", "valeur")
        assert raw_json(redis_server, "préfixe☃:clé") == "valeur"
        assert await c.get("clé") == "valeur"
        assert c.stats_key == "préfixe☃:stats"


async def test_empty_prefix(redis_server):
    async with make(redis_server, prefix="") as c:
        await c.set("k", 1)
        assert raw_json(redis_server, "k") == 1


# ---------------------------------------------------------------------- values / JSON layout


_SHARED = [1, {"x": 2}]  # the same list twice is not a cycle

VALUES = [
    ("str", "hello"),
    ("empty str", ""),
    ("unicode", "héllo ☃ 😀 ключ \u2028 \x00"),
    ("int", 42),
    ("negative int", -17),
    ("big int", 2**100),
    ("huge negative int", -(3**300)),
    ("float", 1.5),
    ("tiny float", 5e-324),
    ("big float", 1.7976931348623157e308),
    ("negative zero", -0.0),
    ("inf", float("inf")),
    ("-inf", float("-inf")),
    ("None", None),
    ("True", True),
    ("False", False),
    ("list", [1, "two", 3.0, None, True]),
    ("tuple", (1, 2, 3)),
    ("nested tuple", (1, (2, (3, ())))),
    ("empty list", []),
    ("empty tuple", ()),
    ("empty dict", {}),
    ("dict", {"a": 1, "b": [1, 2], "c": {"d": None}}),
    ("int dict keys", {1: "one", 2.5: "x", True: "t", None: "n"}),
    ("nested", {"l": [{"t": (1, [2, {"u": "ü"}])}], "e": {}, "n": [[], [[]]]}),
    ("deep", [[[[[[[[[[["deep"]]]]]]]]]]]),
    ("shared sublist", [_SHARED, _SHARED, {"a": _SHARED, "b": (_SHARED,)}]),
    ("lone surrogate", "\ud800 \udfff"),
    ("control chars", "\x01\x1f\x7f\"\\/"),
]


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("value", [v for _, v in VALUES], ids=[n for n, _ in VALUES])
@pytest.mark.topologies("standalone", "cluster")
async def test_json_layout(cache, redis_server, value):
    await cache.set("k", value)
    assert raw_get(redis_server, PREFIX + "k") == json.dumps(value).encode()
    expected = json.loads(json.dumps(value))
    got = await cache.get("k")
    assert got == expected
    assert type(got) is type(expected)
    assert await cache.get_many(["k"]) == {"k": expected}


@pytest.mark.topologies("standalone", "cluster")
async def test_tuples_become_lists(cache):
    await cache.set("k", (1, (2, 3), {"t": (4,)}))
    assert await cache.get("k") == [1, [2, 3], {"t": [4]}]


async def test_nan_round_trip(cache, redis_server):
    await cache.set("k", float("nan"))
    assert raw_get(redis_server, PREFIX + "k") == b"NaN"
    assert math.isnan(await cache.get("k"))


async def test_negative_zero_keeps_sign(cache):
    await cache.set("k", -0.0)
    assert math.copysign(1.0, await cache.get("k")) == -1.0


async def test_big_int_exact(cache):
    n = 10**4000 + 7
    await cache.set("k", n)
    assert await cache.get("k") == n


async def test_json_subclasses(cache):
    class S(str):
        pass

    class D(dict):
        pass

    await cache.set("k", D(a=S("x")))
    got = await cache.get("k")
    assert got == {"a": "x"} and type(got) is dict and type(got["a"]) is str


async def test_sixteen_megabyte_value(cache, redis_server):
    value = "x" * (16 * MB)
    await cache.set("big", value)
    assert redis_server.command("STRLEN", PREFIX + "big") == 16 * MB + 2
    assert await cache.get("big") == value
    assert await cache.get_many(["big"]) == {"big": value}


@pytest.mark.topologies("standalone", "cluster")
async def test_big_values_set_many(cache):
    items = {f"k{i}": [chr(0x41 + i) * MB, i] for i in range(8)}
    await cache.set_many(items, ttl=100)
    got = await cache.get_many(list(items))
    assert got == {k: list(v) for k, v in items.items()}


async def test_big_unicode_value(cache):
    value = {"text": "ü😀" * (2 * MB)}
    await cache.set("k", value)
    assert await cache.get("k") == value


# ---------------------------------------------------------------------- values JSON cannot encode


class Cycle(list):
    pass


def _cycle():
    c = []
    c.append(c)
    return c


UNENCODABLE = [
    ("object", object()),
    ("set", {1, 2}),
    ("bytes", b"raw"),
    ("tuple dict key", {(1, 2): "x"}),
    ("nested object", {"ok": [1, 2, object()]}),
    ("cycle", _cycle()),
    ("too many digits", 10**5000),
    ("complex", 1j),
]


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("value", [v for _, v in UNENCODABLE], ids=[n for n, _ in UNENCODABLE])
async def test_set_unencodable_value(cache, redis_server, value):
    aw = cache.set("k", value)  # the call itself does not raise
    with pytest.raises(CacheError, match="^Failed to set cache key: "):
        await aw
    assert not raw_exists(redis_server, PREFIX + "k")


async def test_set_unencodable_keeps_old_value(cache, redis_server):
    await cache.set("k", "old")
    with pytest.raises(CacheError):
        await cache.set("k", object())
    assert await cache.get("k") == "old"


async def test_set_deep_recursion_value(cache, redis_server):
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(CacheError):
        await cache.set("k", deep)
    assert not raw_exists(redis_server, PREFIX + "k")


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("value", [v for _, v in UNENCODABLE], ids=[n for n, _ in UNENCODABLE])
@pytest.mark.topologies("standalone", "cluster")
async def test_set_many_unencodable_writes_nothing(cache, redis_server, value):
    aw = cache.set_many({"a": 1, "b": value, "c": 3})
    with pytest.raises(CacheError, match="^Failed to set multiple keys: "):
        await aw
    for k in "abc":
        assert not raw_exists(redis_server, PREFIX + k)
    assert raw_keys(redis_server) == set()


async def test_unencodable_value_json_error_is_the_cause_text(cache):
    with pytest.raises(CacheError, match="not JSON serializable"):
        await cache.set("k", object())


async def test_failed_encoding_leaves_nothing_behind(cache):
    # a failed encoding must not poison later ones (circular-reference bookkeeping)
    for i in range(300):
        with pytest.raises(CacheError):
            await cache.set("k", [[i], {"n": [object()]}])
        await cache.set("k", [[i], {"n": [i]}])
        assert await cache.get("k") == [[i], {"n": [i]}]
    with pytest.raises(CacheError, match="[Cc]ircular"):
        await cache.set("k", _cycle())
    await cache.set("k", [_SHARED, _SHARED])


async def test_reentrant_encoding(cache, redis_server):
    class Hooked(dict):
        """Runs Python code (a nested cache.set) while it is being encoded."""

        def items(self):
            cache.set("inner", [1, [2, {"three": 3}]])  # not awaited: still happens
            return super().items()

    await cache.set("outer", [Hooked(a=[1, 2]), Hooked(b={"c": []})])
    assert await cache.get("outer") == [{"a": [1, 2]}, {"b": {"c": []}}]
    assert raw_get(redis_server, PREFIX + "outer") == json.dumps(
        [{"a": [1, 2]}, {"b": {"c": []}}]).encode()
    assert await cache.get("inner") == [1, [2, {"three": 3}]]

    class Failing(dict):
        def items(self):
            cache.set("inner2", ["ok"])
            raise RuntimeError("hook failed")

    with pytest.raises((CacheError, RuntimeError)):
        await cache.set("bad", [Failing(a=1)])
    assert not raw_exists(redis_server, PREFIX + "bad")
    assert await cache.get("inner2") == ["ok"]
    await cache.set("after", [[1], [2]])
    assert await cache.get("after") == [[1], [2]]


def test_encoding_from_threads(redis_server):
    import threading

    class Slow(dict):
        def items(self):
            time.sleep(0.001)  # lets the other threads run mid-encoding
            return super().items()

    errors = []

    def worker(n):
        async def main():
            async with make(redis_server) as c:
                for i in range(30):
                    value = [Slow(n=n, i=i), [n, [i]], [n, [i]]]
                    await c.set(f"{n}:{i}", value)
                    assert await c.get(f"{n}:{i}") == [{"n": n, "i": i}, [n, [i]], [n, [i]]]

        try:
            asyncio.run(main())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not [t for t in threads if t.is_alive()], "a thread hung"
    assert not errors, errors
    assert redis_server.command("DBSIZE") == 6 * 30 + 1  # + the statistics hash
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 6 * 30}


# Raw stored bytes: what get() gives must be what json.loads gives (None where it fails).
RAW_TEXTS = [
    b"1", b" 1", b"1 ", b"\n[1, 2]\n", b"\t{\"a\": 1}\r\n", b"1 2", b"[1] x", b"[1]]",
    b"NaN", b"Infinity", b"-Infinity", b"-", b"nul", b"null", b"true", b"false",
    b'"plain"', b'"\\ud800"', b'"\xed\xa0\x80"', b'"\\ud83d\\ude00"', b'"\xf0\x9f\x98\x80"',
    b'"\xff"', b'"unterminated', b'{"a": 1, "a": 2}', b'{"a" 1}', b"{'a': 1}",
    b"\xef\xbb\xbf[1]", '[1, "\u00e9"]'.encode("utf-16"), '"x"'.encode("utf-16-le"),
    '{"a": 1}'.encode("utf-32"), b"1" * 5000, b"-" + b"9" * 4000, b"1e400", b"-1e400",
    b"0.1e-400", b"01", b"1.", b".5", b"+1", b"[1,]", b"[" * 100_000 + b"]" * 100_000,
    b'"' + b"\\\\" * 1000 + b'"', b"[" + b"1," * 10_000 + b"1]", b"\x00", b"",
]


def _expected_get(raw):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("raw", RAW_TEXTS, ids=lambda r: repr(r[:20]))
async def test_decoding_matches_json_loads(cache, redis_server, raw):
    redis_server.command("SET", PREFIX + "k", raw)
    want = _expected_get(raw)
    got = await cache.get("k")
    if isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want and type(got) is type(want)
    many = await cache.get_many(["k"])
    if want is None and raw.strip() not in (b"null",):
        assert many == {}
    elif not (isinstance(want, float) and math.isnan(want)):
        assert many == {"k": want}


# ---------------------------------------------------------------------- stored text that is not JSON


@pytest.mark.parametrize("stored", [b"not json{", b"", b"\xff\xfe\x00", b"{'single': 1}", b"[1,"])
async def test_get_non_json_gives_none_and_logs(cache, redis_server, caplog, stored):
    redis_server.command("SET", PREFIX + "k", stored)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await cache.get("k") is None
    assert error_records(caplog)
    assert cache.connected
    # the cache keeps working
    await cache.set("ok", 1)
    assert await cache.get("ok") == 1


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_with_non_json_gives_empty_dict(cache, redis_server, caplog):
    await cache.set("good", 1)
    redis_server.command("SET", PREFIX + "bad", "not json")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await cache.get_many(["good", "bad"]) == {}
    assert error_records(caplog)
    assert await cache.get_many(["good"]) == {"good": 1}


@pytest.mark.topologies("standalone", "cluster")
async def test_get_of_wrong_type_gives_none_and_logs(cache, redis_server, caplog):
    redis_server.command("RPUSH", PREFIX + "list", "a")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await cache.get("list") is None
    assert any("WRONGTYPE" in r.getMessage() for r in error_records(caplog))
    # exists/delete work on any type
    assert await cache.exists("list") is True
    assert await cache.delete("list") is True


async def test_get_of_the_statistics_hash_gives_none(cache, redis_server, caplog):
    await cache.get("x")
    await cache.get_stats()  # prefix + "stats" is a hash now
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await cache.get("stats") is None  # WRONGTYPE, as in the reference
    assert error_records(caplog)
    assert await cache.exists("stats") is True


# ---------------------------------------------------------------------- errors once connected


LIMITED = ("-get", "-mget", "-del", "-exists", "-scan", "-hincrby", "-hgetall", "-set")


@pytest_asyncio.fixture
async def forbidden(redis_server):
    """A connected cache whose ACL user may connect but run no data command."""
    redis_server.command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all", *LIMITED)
    c = make(redis_server, username="limited", password="pw")
    await c.connect()
    yield c
    await c.disconnect()


async def test_errors_once_connected_get(forbidden, caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await forbidden.get("k") is None
    msgs = [r.getMessage() for r in error_records(caplog)]
    assert any("NOPERM" in m and "k" in m for m in msgs), msgs


async def test_errors_once_connected_get_many(forbidden, caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await forbidden.get_many(["a", "b"]) == {}
    assert error_records(caplog)


async def test_errors_once_connected_delete_exists(forbidden, caplog):
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert await forbidden.delete("k") is False
        assert await forbidden.exists("k") is False
    assert len(error_records(caplog)) == 2


async def test_errors_once_connected_set(forbidden, redis_server):
    with pytest.raises(CacheError, match="^Failed to set cache key: .*NOPERM"):
        await forbidden.set("k", 1)
    assert not raw_exists(redis_server, PREFIX + "k")


async def test_errors_once_connected_set_many(forbidden):
    with pytest.raises(CacheError, match="^Failed to set multiple keys: .*NOPERM"):
        await forbidden.set_many({"a": 1, "b": 2})


async def test_errors_once_connected_clear(forbidden):
    with pytest.raises(CacheError, match="^Failed to clear cache: .*NOPERM"):
        await forbidden.clear()


async def test_errors_once_connected_get_stats(forbidden):
    stats = await forbidden.get_stats()
    assert stats["type"] == "redis"
    assert "NOPERM" in stats["error"]
    assert set(stats) == {"type", "error"}


async def test_errors_once_connected_keep_connection(forbidden):
    await forbidden.get("k")
    with pytest.raises(CacheError):
        await forbidden.set("k", 1)
    assert forbidden.connected is True
    assert forbidden.stats()["connected"] is True


async def test_oom_error_on_set(cache, redis_server):
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_server.command("CONFIG", "SET", "maxmemory", "1")
    try:
        with pytest.raises(CacheError, match="^Failed to set cache key: .*OOM"):
            await cache.set("k", "v")
        with pytest.raises(CacheError, match="^Failed to set multiple keys: .*OOM"):
            await cache.set_many({"a": 1})
    finally:
        redis_server.command("CONFIG", "SET", "maxmemory", "0")
    await cache.set("k", "v")
    assert await cache.get("k") == "v"


# ---------------------------------------------------------------------- TTL


def ttl_of(server, key):
    return server.command("TTL", PREFIX + key)


def pttl_of(server, key):
    return server.command("PTTL", PREFIX + key)


def set_commands(mon: Monitor, n: int) -> list[list[str]]:
    """The next n SET commands the server ran, as MONITOR saw them."""
    return [mon.wait_for(lambda cmd: cmd[0] == "SET") for _ in range(n)]


async def test_default_ttl_is_3600(cache, redis_server):
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set("k", 1)
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", "1", "EX", "3600"]]
    w.expiry(PREFIX + "k", 3600_000)


async def test_integral_ttl_uses_seconds(cache, redis_server):
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set("k", 1, ttl=100)
            await cache.set("f", 1, ttl=100.0)
        assert set_commands(mon, 2) == [["SET", PREFIX + "k", "1", "EX", "100"],
                                        ["SET", PREFIX + "f", "1", "EX", "100"]]
    w.expiry(PREFIX + "k", 100_000)
    w.expiry(PREFIX + "f", 100_000)


async def test_fractional_ttl_of_one_and_a_half_seconds_is_px_1500(cache, redis_server):
    """ttl=1.5 is stored with PX 1500, not rounded to whole seconds (EX 1 or EX 2):
    the command sent says so, and the expiry Redis holds is 1500 ms after the write
    (PEXPIRETIME within [server time before + 1500, server time after + 1500]: the
    PTTL check "> 1000 and <= 1500 right after", without assuming how long "right
    after" takes)."""
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set("k", "v", ttl=1.5)
        w.expiry(PREFIX + "k", 1500)
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", '"v"', "PX", "1500"]]


async def test_fractional_ttl_uses_milliseconds(cache, redis_server):
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set("k", 1, ttl=100.25)
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", "1", "PX", "100250"]]
    # PX, not EX: 100.25 s is not rounded to 100 or 101 s
    w.expiry(PREFIX + "k", 100_250)


async def test_fractional_ttl_rounds_milliseconds_up(cache, redis_server):
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set("k", 1, ttl=50.0001)  # 50000.1 ms -> 50001 ms
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", "1", "PX", "50001"]]
    w.expiry(PREFIX + "k", 50_001)


async def test_sub_second_ttl_expires(cache, redis_server):
    with Monitor(redis_server) as mon:
        await cache.set("k", 1, ttl=0.3)
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", "1", "PX", "300"]]
    assert await poll(lambda: not raw_exists(redis_server, PREFIX + "k"))
    assert await cache.get("k") is None
    assert await cache.exists("k") is False


async def test_one_second_ttl_expires(cache, redis_server):
    with Monitor(redis_server) as mon:
        await cache.set("k", 1, ttl=1)
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", "1", "EX", "1"]]
    assert await poll(lambda: not raw_exists(redis_server, PREFIX + "k"))
    assert await cache.get("k") is None


@pytest.mark.parametrize("ttl", [decimal.Decimal("100.5"), fractions.Fraction(201, 2)])
async def test_number_like_ttl(cache, redis_server, ttl):
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set("k", 1, ttl=ttl)
        assert set_commands(mon, 1) == [["SET", PREFIX + "k", "1", "PX", "100500"]]
    w.expiry(PREFIX + "k", 100_500)


@pytest.mark.parametrize("ttl", [0, 0.0, False])
async def test_falsy_ttl_means_no_expiry(cache, redis_server, ttl):
    with Monitor(redis_server) as mon:
        await cache.set("k", 1, ttl=ttl)
        await cache.set_many({"a": 1}, ttl=ttl)
        assert set_commands(mon, 2) == [["SET", PREFIX + "k", "1"], ["SET", PREFIX + "a", "1"]]
    assert ttl_of(redis_server, "k") == -1
    assert ttl_of(redis_server, "a") == -1


async def test_default_ttl_none_means_no_expiry(redis_server):
    async with make(redis_server, default_ttl=None) as c:
        with ExpiryWindow(redis_server) as w:
            await c.set("k", 1)
            await c.set("e", 1, ttl=100)
            await c.set_many({"a": 1})
        assert ttl_of(redis_server, "k") == -1
        w.expiry(PREFIX + "e", 100_000)
        assert ttl_of(redis_server, "a") == -1


async def test_default_ttl_zero_means_no_expiry(redis_server):
    async with make(redis_server, default_ttl=0) as c:
        await c.set("k", 1)
        assert ttl_of(redis_server, "k") == -1


async def test_fractional_default_ttl(redis_server):
    async with make(redis_server, default_ttl=100.5) as c:
        with Monitor(redis_server) as mon:
            with ExpiryWindow(redis_server) as w:
                await c.set("k", 1)
                await c.set_many({"a": 1, "b": 2})
            assert set_commands(mon, 3) == [
                ["SET", PREFIX + key, str(value), "PX", "100500"]
                for key, value in (("k", 1), ("a", 1), ("b", 2))]
        for key in ("k", "a", "b"):
            w.expiry(PREFIX + key, 100_500)


async def test_integral_default_ttl(redis_server):
    async with make(redis_server, default_ttl=200) as c:
        with ExpiryWindow(redis_server) as w:
            await c.set("k", 1)
            await c.set("n", 1, ttl=None)
        w.expiry(PREFIX + "k", 200_000)
        w.expiry(PREFIX + "n", 200_000)


async def test_overwrite_without_ttl_removes_expiry(cache, redis_server):
    await cache.set("k", 1, ttl=100)
    await cache.set("k", 2, ttl=0)
    assert ttl_of(redis_server, "k") == -1
    with ExpiryWindow(redis_server) as w:
        await cache.set("k", 3, ttl=50)
    w.expiry(PREFIX + "k", 50_000)


async def test_set_many_ttl(cache, redis_server):
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await cache.set_many({"a": 1, "b": 2}, ttl=100)
            await cache.set_many({"c": 3}, ttl=100.5)
            await cache.set_many({"d": 4})
        assert set_commands(mon, 4) == [["SET", PREFIX + "a", "1", "EX", "100"],
                                        ["SET", PREFIX + "b", "2", "EX", "100"],
                                        ["SET", PREFIX + "c", "3", "PX", "100500"],
                                        ["SET", PREFIX + "d", "4", "EX", "3600"]]
    w.expiry(PREFIX + "a", 100_000)
    w.expiry(PREFIX + "b", 100_000)
    w.expiry(PREFIX + "c", 100_500)
    w.expiry(PREFIX + "d", 3600_000)


@pytest.mark.parametrize("ttl, exc", [
    (-1, ValueError),
    (-0.5, ValueError),
    (float("nan"), ValueError),
    (float("-inf"), ValueError),
    ("10", TypeError),
    (b"10", TypeError),
    ([10], TypeError),
    (object(), TypeError),
], ids=lambda v: "object()" if type(v) is object else repr(v))
async def test_bad_ttl_raises_at_call(cache, redis_server, ttl, exc):
    with pytest.raises(exc):
        cache.set("k", 1, ttl=ttl)
    with pytest.raises(exc):
        cache.set_many({"a": 1}, ttl=ttl)
    assert raw_keys(redis_server) == set()


async def test_bad_ttl_raises_even_when_unconnected(closed_port):
    c = RedisCache(host="127.0.0.1", port=closed_port)
    with pytest.raises(ValueError):
        c.set("k", 1, ttl=-5)
    with pytest.raises(TypeError):
        c.set("k", 1, ttl="5")


# ---------------------------------------------------------------------- get_many / set_many


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many(cache, redis_server):
    await cache.set_many({"a": 1, "b": [2], "c": None})
    got = await cache.get_many(["a", "b", "c", "missing"])
    # a stored JSON null is found (the reference tests the raw reply for None)
    assert got == {"a": 1, "b": [2], "c": None}
    s = cache.stats()
    assert s["hits"] == 3 and s["misses"] == 1


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_keyed_by_requested_objects(cache):
    await cache.set(1, "one")
    await cache.set((2, 3), "tuple")
    got = await cache.get_many([1, (2, 3), "1"])
    assert got == {1: "one", (2, 3): "tuple", "1": "one"}
    assert set(map(type, got)) == {int, tuple, str}


@pytest.mark.parametrize("make_keys", [list, tuple, lambda ks: (k for k in ks), dict.fromkeys],
                         ids=["list", "tuple", "generator", "dict"])
@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_iterables(cache, make_keys):
    await cache.set_many({"a": 1, "b": 2})
    assert await cache.get_many(make_keys(["a", "b", "z"])) == {"a": 1, "b": 2}


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_duplicates(cache):
    await cache.set("a", 1)
    assert await cache.get_many(["a", "a", "z", "z"]) == {"a": 1}
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 2


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_empty_no_round_trip(cache):
    before = cache.stats()["commands"]
    assert await cache.get_many([]) == {}
    assert await cache.get_many(()) == {}
    assert cache.stats()["commands"] == before
    assert cache.stats()["hits"] == 0 and cache.stats()["misses"] == 0


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_many_keys(cache):
    items = {f"key{i}": {"i": i} for i in range(5000)}
    await cache.set_many(items)
    keys = list(items) + [f"absent{i}" for i in range(100)]
    assert await cache.get_many(keys) == items
    assert cache.stats()["hits"] == 5000 and cache.stats()["misses"] == 100


async def test_get_many_not_iterable(cache):
    with pytest.raises(TypeError):
        cache.get_many(42)


@pytest.mark.topologies("standalone", "cluster")
async def test_set_many(cache, redis_server):
    assert await cache.set_many({"a": 1, "b": (1, 2), 3: "three"}) is None
    assert raw_json(redis_server, PREFIX + "a") == 1
    assert raw_json(redis_server, PREFIX + "b") == [1, 2]
    assert raw_json(redis_server, PREFIX + "3") == "three"


async def test_set_many_empty(cache, redis_server):
    assert await cache.set_many({}) is None
    assert raw_keys(redis_server) == set()


@pytest.mark.topologies("standalone", "cluster")
async def test_set_many_mapping_like(cache, redis_server):
    class Mapping:
        def items(self):
            return [("x", 1), ("y", 2)]

    await cache.set_many(Mapping())
    assert raw_json(redis_server, PREFIX + "x") == 1
    assert raw_json(redis_server, PREFIX + "y") == 2


@pytest.mark.parametrize("bad", [[("a", 1)], 42, "ab", None])
async def test_set_many_not_a_mapping(cache, bad):
    with pytest.raises(TypeError):
        cache.set_many(bad)


@pytest.mark.topologies("standalone", "cluster")
async def test_set_many_large_batch(cache, redis_server):
    items = {f"k{i}": i for i in range(20_000)}
    await cache.set_many(items, ttl=100)
    assert redis_server.command("DBSIZE") == 20_000
    assert await cache.get_many(["k0", "k19999"]) == {"k0": 0, "k19999": 19999}


# ---------------------------------------------------------------------- clear


@pytest.mark.topologies("standalone", "cluster")
async def test_clear(cache, redis_server):
    await cache.set_many({f"k{i}": i for i in range(10)})
    redis_server.command("SET", "other:k", "1")
    redis_server.command("SET", "t", "1")  # the prefix without its colon
    await cache.get("k1")
    await cache.get_stats()  # creates the statistics hash
    assert raw_exists(redis_server, PREFIX + "stats")
    assert await cache.clear() is None
    # everything under the prefix goes, the statistics hash included (as in the reference)
    assert raw_keys(redis_server) == {b"other:k", b"t"}
    assert await cache.get("k1") is None


@pytest.mark.topologies("standalone", "cluster")
async def test_clear_many_keys(cache, redis_server):
    await cache.set_many({f"k{i}": i for i in range(5000)})
    redis_server.command("SET", "keep", "1")
    await cache.clear()
    assert raw_keys(redis_server) == {b"keep"}


@pytest.mark.topologies("standalone", "cluster")
async def test_clear_empty(cache, redis_server):
    await cache.clear()
    await cache.clear()
    assert raw_keys(redis_server) == set()


GLOB_PREFIXES = ["a*", "a?", "a[", "a]", "a\\", "a[b]", "a[!x]", "*", "?", "\\*", "a[^c]-"]


def _lookalikes(prefix):
    """Keys that an unescaped glob `prefix*` would match but that do not start with
    the literal prefix."""
    return [
        "ab", "a", "abk", "ack", "axk", "a\\k", "a\\", "ak", "b", "zz", "a*x",
        "a?" if prefix != "a?" else "aQ",
        prefix[:-1] + "Z" + "k",
    ]


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("prefix", GLOB_PREFIXES)
@pytest.mark.topologies("standalone", "cluster")
async def test_clear_escapes_glob_prefix(redis_server, prefix):
    others = [k for k in _lookalikes(prefix) if not k.startswith(prefix)]
    for k in others:
        redis_server.command("SET", k, '"other"')
    async with make(redis_server, prefix=prefix) as c:
        await c.set_many({"k1": 1, "k2": 2, "": 0})
        assert raw_exists(redis_server, prefix + "k1")
        await c.clear()
        assert not raw_exists(redis_server, prefix + "k1")
        assert not raw_exists(redis_server, prefix + "k2")
        assert not raw_exists(redis_server, prefix)
        assert raw_keys(redis_server) == {k.encode() for k in others}


@pytest.mark.transports("tcp")  # encoding/validation: the same bytes over any transport
@pytest.mark.parametrize("prefix", GLOB_PREFIXES)
@pytest.mark.topologies("standalone", "cluster")
async def test_get_stats_size_escapes_glob_prefix(redis_server, prefix):
    others = [k for k in _lookalikes(prefix) if not k.startswith(prefix)]
    for k in others:
        redis_server.command("SET", k, '"other"')
    async with make(redis_server, prefix=prefix) as c:
        await c.set_many({"k1": 1, "k2": 2})
        assert (await c.get_stats())["size"] == 2


@pytest.mark.parametrize("prefix", ["p" * 300 + ":", "a*" * 150, "[\\]?*" * 60 + "x"],
                         ids=["long", "long globs", "long escapes"])
async def test_long_prefix(redis_server, prefix):
    redis_server.command("SET", "p" * 299, '"other"')
    redis_server.command("SET", "a", '"other"')
    redis_server.command("SET", "x", '"other"')
    async with make(redis_server, prefix=prefix) as c:
        await c.set_many({f"k{i}": i for i in range(1500)})
        await c.get("k1")
        assert await c.get_many(["k0", "k1499"]) == {"k0": 0, "k1499": 1499}
        stats = await c.get_stats()
        assert stats["size"] == 1501  # the keys and the statistics hash
        assert hgetall(redis_server, prefix + "stats") == {"hits": 3}
        await c.clear()
        assert (await c.get_stats())["size"] == 0
    assert raw_keys(redis_server) == {b"p" * 299, b"a", b"x"}


# ---------------------------------------------------------------------- get_stats / stats()


@pytest.mark.topologies("standalone", "cluster")
async def test_get_stats_shape(cache):
    stats = await cache.get_stats()
    assert stats == {"type": "redis", "size": 0, "hits": 0, "misses": 0, "hit_rate": 0.0,
                     "connected": True}
    assert type(stats["size"]) is int and type(stats["hits"]) is int
    assert type(stats["hit_rate"]) is float


@pytest.mark.topologies("standalone", "cluster")
async def test_get_stats_counts(cache, redis_server):
    await cache.set_many({"a": 1, "b": 2, "c": 3})
    await cache.get("a")
    await cache.get("x")
    await cache.get("y")
    stats = await cache.get_stats()
    assert stats["hits"] == 1 and stats["misses"] == 2
    assert stats["hit_rate"] == 33.33
    assert stats["size"] == 4  # a, b, c and the statistics hash, as the reference counts
    assert stats["connected"] is True
    # flushed to the hash before being read
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 1, "misses": 2}


async def test_get_stats_hit_rate_rounding(cache):
    await cache.set("a", 1)
    for k in ("a", "a", "z"):
        await cache.get(k)
    assert (await cache.get_stats())["hit_rate"] == 66.67
    await cache.get("a")
    assert (await cache.get_stats())["hit_rate"] == 75.0


async def test_get_stats_only_hits(cache):
    await cache.set("a", 1)
    await cache.get("a")
    assert (await cache.get_stats())["hit_rate"] == 100.0


async def test_get_stats_reads_existing_hash(cache, redis_server):
    redis_server.command("HSET", PREFIX + "stats", "hits", 10, "misses", 30)
    stats = await cache.get_stats()
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (10, 30, 25.0)
    await cache.get("nothing")
    stats = await cache.get_stats()
    assert (stats["hits"], stats["misses"]) == (10, 31)


@pytest.mark.topologies("standalone", "cluster")
async def test_get_stats_size_many_keys(cache):
    await cache.set_many({f"k{i}": i for i in range(2500)})
    assert (await cache.get_stats())["size"] == 2500


@pytest.mark.topologies("standalone", "cluster")
async def test_get_stats_size_ignores_other_prefixes(cache, redis_server):
    redis_server.command("SET", "other:x", "1")
    redis_server.command("SET", "t", "1")
    await cache.set("a", 1)
    assert (await cache.get_stats())["size"] == 1


def hincrby_calls(server) -> int:
    """HINCRBY commands the server has run (INFO commandstats), failed ones included."""
    for line in server.command("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_hincrby:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def test_stats_flushed_in_background(cache, redis_server):
    await cache.set("a", 1)
    await cache.get("a")
    await cache.get("a")
    await cache.get("missing")
    # no get_stats(), no disconnect(): the I/O thread flushes at least every second
    assert await poll(lambda: hgetall(redis_server, PREFIX + "stats") ==
                      {"hits": 2, "misses": 1})
    # and flushes each count once: after a later flush (of one more hit: one HINCRBY)
    # the hash holds exactly what was counted
    calls = hincrby_calls(redis_server)
    await cache.get("a")
    assert await poll(lambda: hincrby_calls(redis_server) == calls + 1)
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 3, "misses": 1}
    stats = await cache.get_stats()
    assert (stats["hits"], stats["misses"]) == (3, 1)
    assert hincrby_calls(redis_server) == calls + 1  # nothing was left to flush


@pytest.mark.topologies("standalone", "cluster")
async def test_stats_flushed_at_disconnect(redis_server):
    c = make(redis_server)
    await c.set("a", 1)
    await asyncio.gather(*(c.get("a") for _ in range(5)), *(c.get("z") for _ in range(3)))
    await c.disconnect()
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 5, "misses": 3}


async def test_stats_flushed_at_async_with_exit(redis_server):
    async with make(redis_server) as c:
        await c.get("z")
    assert hgetall(redis_server, PREFIX + "stats") == {"misses": 1}


@pytest.mark.topologies("standalone", "cluster")
async def test_get_many_counts_flushed(cache, redis_server):
    await cache.set_many({"a": 1, "b": 2})
    await cache.get_many(["a", "b", "c"])
    await cache.get_stats()
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 2, "misses": 1}


async def test_no_traffic_no_stats_hash(cache, redis_server):
    await cache.set("a", 1)
    await cache.get_stats()
    await cache.disconnect()
    assert not raw_exists(redis_server, PREFIX + "stats")


@pytest.mark.topologies("standalone", "cluster")
async def test_get_stats_aggregates_two_caches(redis_server):
    async with make(redis_server) as a, make(redis_server) as b:
        await a.set("k", 1)
        await a.get("k")
        await a.get("k")
        await b.get("k")
        await b.get("nope")
        await b.get("nope2")
        sa = await a.get_stats()  # flushes a's counts
        assert (sa["hits"], sa["misses"]) == (2, 0) or (sa["hits"], sa["misses"]) == (3, 2)
        sb = await b.get_stats()  # flushes b's, reads both
        assert (sb["hits"], sb["misses"], sb["hit_rate"]) == (3, 2, 60.0)
        sa = await a.get_stats()
        assert (sa["hits"], sa["misses"]) == (3, 2)
        assert sa["size"] == sb["size"] == 2  # k and the hash
        # each process's own counts stay local in stats()
        assert (a.stats()["hits"], a.stats()["misses"]) == (2, 0)
        assert (b.stats()["hits"], b.stats()["misses"]) == (1, 2)


async def test_stats_flushed_when_cache_is_dropped_while_others_work(redis_server):
    """Regression: the I/O thread released a dropped cache's client without flushing its
    pending counts when it passed through for another client before the flush timer."""
    other = make(redis_server, prefix="other:")
    await other.connect()
    c = make(redis_server)
    await c.get("x")
    await c.get("y")
    del c
    gc.collect()
    await other.set("wake", 1)  # the I/O thread runs a pass at once
    assert await poll(lambda: hgetall(redis_server, PREFIX + "stats") == {"misses": 2},
                      timeout=5)
    await other.disconnect()


async def test_different_prefixes_do_not_share_stats(redis_server):
    async with make(redis_server, prefix="one:") as a, make(redis_server, prefix="two:") as b:
        await a.get("x")
        assert (await b.get_stats())["misses"] == 0
        assert (await a.get_stats())["misses"] == 1


async def test_stats_plain(cache):
    s = cache.stats()
    for key in ("hits", "misses", "hit_rate", "errors", "timeouts", "reconnects",
                "in_flight", "connected", "commands", "batches"):
        assert key in s, key
    assert s["connected"] is True
    assert s["in_flight"] == 0
    assert s["hits"] == 0 and s["misses"] == 0 and s["hit_rate"] == 0.0
    await cache.set("a", 1)
    await cache.get("a")
    await cache.get("a")
    await cache.get("a")
    await cache.get("z")
    s = cache.stats()
    assert (s["hits"], s["misses"], s["hit_rate"]) == (3, 1, 0.75)
    assert f"{s['hit_rate']:.2%}" == "75.00%"
    assert s["commands"] >= 5 and s["batches"] >= 1
    assert s["commands"] >= s["batches"]
    assert s["in_flight"] == 0
    assert s["errors"] == 0 and s["timeouts"] == 0 and s["reconnects"] == 0


async def test_stats_plain_in_flight(cache):
    """in_flight counts the requests made and not yet finished: all 100 right after
    they are made (none can finish before this task lets the loop run), none once
    they are awaited."""
    aws = [cache.set(f"k{i}", i) for i in range(100)]
    assert cache.stats()["in_flight"] == 100
    await asyncio.gather(*aws)
    assert cache.stats()["in_flight"] == 0


def test_stats_plain_unconnected():
    s = RedisCache().stats()
    assert s["connected"] is False and s["hits"] == 0 and s["in_flight"] == 0


async def test_stats_plain_connected_follows_disconnect(redis_server):
    c = make(redis_server)
    await c.connect()
    assert c.stats()["connected"] is True
    await c.disconnect()
    assert c.stats()["connected"] is False


# ---------------------------------------------------------------------- the user key "stats"


@pytest.mark.topologies("standalone", "cluster")
async def test_user_key_stats_is_ordinary(cache, redis_server):
    await cache.set("stats", {"mine": [1, 2]})
    assert raw_json(redis_server, PREFIX + "stats") == {"mine": [1, 2]}
    assert await cache.get("stats") == {"mine": [1, 2]}
    assert await cache.exists("stats") is True
    assert await cache.get_many(["stats"]) == {"stats": {"mine": [1, 2]}}


async def test_user_key_stats_and_get_stats(cache, redis_server):
    await cache.set("stats", "user value")
    await cache.set("a", 1)
    await cache.get("a")
    await cache.get("nope")
    await cache.get("stats")
    stats = await cache.get_stats()
    assert "error" not in stats
    own = cache.stats()
    assert (stats["hits"], stats["misses"]) == (own["hits"], own["misses"]) == (2, 1)
    assert stats["hit_rate"] == 66.67
    assert stats["size"] == 2  # "stats" and "a"
    assert stats["connected"] is True
    # the user value survives get_stats() and the background flushes: one more hit,
    # and its flush (refused by Redis: WRONGTYPE) happens
    calls = hincrby_calls(redis_server)
    assert await cache.get("stats") == "user value"
    assert await poll(lambda: hincrby_calls(redis_server) > calls)
    assert raw_json(redis_server, PREFIX + "stats") == "user value"
    assert cache.connected and cache.stats()["connected"]
    stats = await cache.get_stats()
    assert (stats["hits"], stats["misses"]) == (3, 1)
    assert raw_json(redis_server, PREFIX + "stats") == "user value"


async def test_user_key_stats_survives_disconnect_flush(redis_server):
    c = make(redis_server)
    await c.set("stats", [1])
    await c.get("x")
    await c.disconnect()
    assert raw_json(redis_server, PREFIX + "stats") == [1]


async def test_user_key_stats_replaces_hash_and_back(cache, redis_server):
    await cache.get("x")
    await cache.get_stats()
    assert hgetall(redis_server, PREFIX + "stats") == {"misses": 1}
    await cache.set("stats", 5)  # SET replaces the hash
    assert await cache.get("stats") == 5
    assert await cache.delete("stats") is True
    await cache.get("y")
    stats = await cache.get_stats()  # the hash starts afresh
    assert "error" not in stats
    # get("stats") was a hit, get("y") a miss
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 1, "misses": 1}


# ---------------------------------------------------------------------- awaitables


async def test_awaitable_protocol(cache):
    aw = cache.get("k")
    assert inspect.isawaitable(aw)
    assert asyncio.iscoroutine(aw)
    for name in ("send", "throw", "close", "__await__"):
        assert callable(getattr(aw, name))
    assert await aw is None


async def test_operation_starts_at_call(cache, redis_server):
    aw = cache.set("k", "early")
    assert await poll(lambda: raw_exists(redis_server, PREFIX + "k"))
    assert await aw is None


async def test_never_awaited_still_completes(cache, redis_server, recwarn):
    cache.set("k", "fire and forget")  # dropped at once
    assert await cache.get("k") == "fire and forget"
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


async def test_create_task_and_ensure_future(cache):
    t = asyncio.create_task(cache.set("k", 1))
    assert await t is None
    f = asyncio.ensure_future(cache.get("k"))
    assert await f == 1


@pytest.mark.topologies("standalone", "cluster")
async def test_gather_concurrent(cache, redis_server):
    n = 2000
    await asyncio.gather(*(cache.set(f"k{i}", {"i": i}) for i in range(n)))
    got = await asyncio.gather(*(cache.get(f"k{i}") for i in range(n)))
    assert got == [{"i": i} for i in range(n)]  # none lost (difference 1)
    # n keys, and the statistics hash once a flush happened (once a second, at any
    # moment: one snapshot of the keys, not a count and a check that a flush can split)
    keys = set(redis_server.command("KEYS", "*")) - {(PREFIX + "stats").encode()}
    assert keys == {f"{PREFIX}k{i}".encode() for i in range(n)}


async def test_pool_arguments_never_limit_requests(redis_server):
    async with make(redis_server, max_connections=1, pool_size=1, max_overflow=0) as c:
        await c.set_many({f"k{i}": i for i in range(500)})
        got = await asyncio.gather(*(c.get(f"k{i}") for i in range(500)))
        assert got == list(range(500))
        assert c.stats()["hits"] == 500


@pytest.mark.topologies("standalone", "cluster")
async def test_many_concurrent_tasks(cache):
    async def worker(w):
        for i in range(20):
            await cache.set(f"w{w}:{i}", [w, i])
            assert await cache.get(f"w{w}:{i}") == [w, i]
        return w

    assert await asyncio.gather(*(worker(w) for w in range(100))) == list(range(100))
    assert cache.stats()["hits"] == 2000


async def test_wait_for(cache):
    await asyncio.wait_for(cache.set("k", 1), timeout=30)
    assert await asyncio.wait_for(cache.get("k"), timeout=30) == 1


async def test_shield(cache):
    await asyncio.shield(cache.set("k", 1))
    assert await asyncio.shield(cache.get("k")) == 1


async def test_task_group(cache):
    async with asyncio.TaskGroup() as tg:
        t1 = tg.create_task(cache.set("a", 1))
        t2 = tg.create_task(cache.set("b", 2))
    assert t1.result() is None and t2.result() is None
    async with asyncio.TaskGroup() as tg:
        g = [tg.create_task(cache.get(k)) for k in ("a", "b", "c")]
    assert [t.result() for t in g] == [1, 2, None]


async def test_as_completed(cache):
    await cache.set_many({"a": 1, "b": 2})
    results = [await f for f in asyncio.as_completed([cache.get("a"), cache.get("b")])]
    assert sorted(results) == [1, 2]


@pytest.mark.topologies("standalone", "cluster")
async def test_cancel_is_safe(cache, redis_server):
    """Tasks cancelled while their gets wait for Redis (stalled, so no reply can have
    come) raise CancelledError; the others get the value once Redis answers."""
    await cache.set("k", 1)
    stall = redis_server.stall(3600)
    try:
        tasks = [asyncio.create_task(cache.get("k")) for _ in range(50)]
        await asyncio.sleep(0)
        assert all(t.cancel() for t in tasks[::2])
    finally:
        stall.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2]), results
    assert results[1::2] == [1] * 25
    assert await cache.get("k") == 1
    assert await poll(lambda: cache.stats()["in_flight"] == 0)


@pytest.mark.parametrize("sent", [True, False], ids=["sent", "unsent"])
async def test_cancelled_set_leaves_cache_working(cache, redis_server, sent):
    """Cancelling the task awaiting a set() cancels the waiting, not the write: the
    request was made at the call and completes anyway (README, "The awaitable"; a
    cancelled task's "late result is dropped"). Whether the SET had reached Redis
    when the task was cancelled (it waits unanswered at a stalled server) or had not
    even been handed to the I/O thread (cancelled before the task first ran), the
    value is stored once the request completes."""
    stall = redis_server.stall(3600)
    try:
        commands = cache.stats()["commands"]
        t = asyncio.create_task(cache.set("k", "v"))
        if sent:
            await until(lambda: cache.stats()["commands"] == commands + 1,
                        "the SET on the connection")
        assert t.cancel()  # stalled: no reply can have come
        with pytest.raises(asyncio.CancelledError):
            await t
        assert cache.stats()["in_flight"] == 1  # the request itself goes on
    finally:
        stall.cancel()
    assert await poll(lambda: cache.stats()["in_flight"] == 0)
    assert raw_json(redis_server, PREFIX + "k") == "v"
    assert await cache.get("k") == "v"
    await cache.set("k2", "v2")
    assert await cache.get("k2") == "v2"


async def test_awaiting_twice(cache):
    aw = cache.get("k")
    assert await aw is None
    with pytest.raises(RuntimeError):
        await aw


async def test_wrapped_in_coroutine(cache):
    async def via():
        return await cache.get("k")

    await cache.set("k", [1])
    assert await via() == [1]


def test_asyncio_run_directly(redis_server, loop_factory):
    c = make(redis_server)
    aw = c.set("k", "from outside")  # no loop runs: nothing happens yet
    assert not raw_exists(redis_server, PREFIX + "k")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(aw) is None
    assert raw_json(redis_server, PREFIX + "k") == "from outside"
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(c.get("k")) == "from outside"
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(c.disconnect())


def test_asyncio_run_plain(redis_server):
    c = make(redis_server)
    asyncio.run(c.set("k", 1))
    assert asyncio.run(c.get("k")) == 1
    assert asyncio.run(c.get_many(["k"])) == {"k": 1}
    assert asyncio.run(c.get_stats())["hits"] == 2
    asyncio.run(c.disconnect())


def test_asyncio_run_connection_failure(closed_port, loop_factory):
    c = RedisCache(host="127.0.0.1", port=closed_port, connect_timeout=2)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        with pytest.raises(CacheError, match="^Redis connection failed: "):
            runner.run(c.get("k"))


def test_created_outside_loop_never_awaited_does_nothing(redis_server, recwarn):
    c = make(redis_server)
    aw = c.set("k", 1)
    del aw
    gc.collect()
    assert not raw_exists(redis_server, PREFIX + "k")
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
    asyncio.run(c.set("j", 2))  # the cache is unaffected
    assert raw_json(redis_server, PREFIX + "j") == 2


def test_never_awaited_completes_when_the_loop_stops_at_once(redis_server, loop_factory):
    c = make(redis_server)
    loop = loop_factory()
    try:
        loop.run_until_complete(c.connect())

        def last_callback():
            c.set("k", "last words")  # never awaited
            loop.stop()

        loop.call_soon(last_callback)
        loop.run_forever()
    finally:
        loop.close()
    deadline = time.monotonic() + 10
    while not raw_exists(redis_server, PREFIX + "k"):
        assert time.monotonic() < deadline, "the operation never happened"
        time.sleep(0.05)
    assert raw_json(redis_server, PREFIX + "k") == "last words"
    asyncio.run(c.disconnect())


def test_never_awaited_completes_at_the_end_of_run(redis_server, loop_factory):
    c = make(redis_server)

    async def main():
        await c.connect()
        c.set("k1", 1)  # never awaited, the last thing main does
        c.set("k2", 2)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    deadline = time.monotonic() + 10
    while redis_server.command("EXISTS", PREFIX + "k1", PREFIX + "k2") != 2:
        assert time.monotonic() < deadline, "the operations never happened"
        time.sleep(0.05)
    asyncio.run(c.disconnect())


def test_one_cache_across_loops(redis_server, loop_factory):
    c = make(redis_server)
    with asyncio.Runner(loop_factory=loop_factory) as r1:
        r1.run(c.connect())
        r1.run(c.set("k", 1))
    with asyncio.Runner(loop_factory=loop_factory) as r2:
        assert r2.run(c.get("k")) == 1
        r2.run(c.set("k", 2))
    assert asyncio.run(c.get("k")) == 2
    asyncio.run(c.disconnect())


def test_caches_in_threads(redis_server, loop_factory):
    import threading

    errors = []

    def worker(n):
        try:
            async def main():
                async with make(redis_server) as c:
                    for i in range(50):
                        await c.set(f"{n}:{i}", i)
                        assert await c.get(f"{n}:{i}") == i

            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(main())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()], "a thread hung"
    assert not errors, errors
    # every key of every thread, and the statistics hash their gets were flushed to
    assert raw_keys(redis_server) == {f"{PREFIX}{n}:{i}".encode() for n in range(4)
                                      for i in range(50)} | {PREFIX.encode() + b"stats"}
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 4 * 50}


async def test_throw_and_close_pending(cache):
    await cache.set("k", 1)
    aw = cache.get("k")
    with pytest.raises(KeyError):
        aw.throw(KeyError("thrown"))
    aw2 = cache.get("k")
    aw2.close()
    aw2.close()
    assert await cache.get("k") == 1
    assert await poll(lambda: cache.stats()["in_flight"] == 0)


def test_fork(redis_server):
    c = make(redis_server)
    asyncio.run(c.set("parent", 1))
    pid = fork()  # (3.12+'s warning about threads silenced)
    if pid == 0:  # the child: the same object, a connection of its own
        code = 1
        try:
            async def child():
                assert await c.get("parent") == 1
                await c.set("child", 2)
                await c.disconnect()

            asyncio.run(child())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert raw_json(redis_server, PREFIX + "child") == 2
    # the parent's connection is untouched
    assert asyncio.run(c.get("child")) == 2
    asyncio.run(c.disconnect())


# ---------------------------------------------------------------------- references


class Key:
    def __format__(self, spec):
        return "refkey"


@pytest.mark.topologies("standalone", "cluster")
async def test_no_reference_leaks(cache):
    key, value = Key(), {"v": [1, 2]}
    await cache.set(key, value)
    await cache.set_many({key: value})
    keys = [key, "a"]
    logger = logging.getLogger(LOGGER)
    logger.disabled = True  # the failed set is logged: records (kept by pytest) hold the key
    try:
        before = sys.getrefcount(key), sys.getrefcount(value), sys.getrefcount(keys)
        for _ in range(200):
            await cache.set(key, value, ttl=100)
            await cache.get(key)
            await cache.exists(key)
            await cache.get_many(keys)
            await cache.set_many({key: value})
            await cache.delete(key)
            with pytest.raises(CacheError):
                await cache.set(key, object())
        gc.collect()
        assert (sys.getrefcount(key), sys.getrefcount(value), sys.getrefcount(keys)) == before
    finally:
        logger.disabled = False


async def test_no_reference_leaks_on_errors(forbidden):
    key = Key()
    logger = logging.getLogger(LOGGER)
    logger.disabled = True  # log records (kept by pytest) would hold the key
    try:
        before = sys.getrefcount(key)
        for _ in range(100):
            await forbidden.get(key)
            await forbidden.get_many([key])
            await forbidden.delete(key)
            await forbidden.exists(key)
            with pytest.raises(CacheError):
                await forbidden.set(key, 1)
        gc.collect()
        assert sys.getrefcount(key) == before
    finally:
        logger.disabled = False


async def test_cache_is_freed(redis_server):
    c = make(redis_server)
    await c.set("k", 1)
    await c.get("k")
    c.get("k")  # never awaited
    ref = weakref.ref(c)
    await c.disconnect()
    del c
    assert await poll(lambda: (gc.collect(), ref() is None)[1])


async def test_unconnected_cache_is_freed():
    c = RedisCache()
    ref = weakref.ref(c)
    del c
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------- mocking


async def test_async_mock_spec():
    m = unittest.mock.AsyncMock(spec=RedisCache)
    for name in ("get", "set", "delete", "exists", "clear", "get_many", "set_many",
                 "get_stats", "connect", "disconnect"):
        assert isinstance(getattr(m, name), unittest.mock.AsyncMock), name
        assert asyncio.iscoroutinefunction(getattr(RedisCache, name)), name
    m.get.return_value = {"v": 1}
    assert await m.get("k") == {"v": 1}
    m.get.assert_awaited_once_with("k")
    assert not isinstance(m.stats, unittest.mock.AsyncMock)
    with pytest.raises(AttributeError):
        m.not_a_method


async def test_create_autospec():
    m = unittest.mock.create_autospec(RedisCache, instance=True)
    m.get.return_value = "mocked"
    m.set.return_value = None
    assert await m.get("k") == "mocked"
    assert await m.set("k", 1) is None


def test_subclass():
    class Mine(RedisCache):
        pass

    c = Mine(prefix="sub:")
    assert c.prefix == "sub:" and isinstance(c, RedisCache)
    assert isinstance(Mine.from_url("redis://h"), Mine)
