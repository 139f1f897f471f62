"""RedisCache and bruno-memory's on one Redis: shared storage (README "RedisCache API").

The reference's RedisCache (bruno-memory 0.1.5, redis-py asyncio) and ours on one
redis-server with one prefix: README "RedisCache API", "Storage is the reference's, so
both can share one Redis" and its Statistics ("get_stats() therefore aggregates every
process, as the reference's does").

Each value written by one is read by the other, with the same JSON text, the same key and
equivalent expiry; the statistics hash is shared; either can clear what both wrote.
Async tests run under both asyncio and uvloop (tests/conftest.py).
"""
from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
import pytest_asyncio

from bruno_memory_c import CacheError, RedisCache
from bruno_memory_c.testing import RedisServer, refused_port
from tests.support import ExpiryWindow, Monitor, hgetall
from tests.support.reference import reference_classes

# redis-py deprecates Redis.close() (the reference's disconnect) in favour of aclose().
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PREFIX = "shared:"


def Reference():
    return reference_classes()["RedisCache"]


def ReferenceCacheError():
    import bruno_memory.exceptions

    return bruno_memory.exceptions.CacheError


def make_ours(server, **kw) -> RedisCache:
    kw.setdefault("prefix", PREFIX)
    return RedisCache(host="127.0.0.1", port=server.port, password=server.password, **kw)


def make_ref(server, **kw):
    kw.setdefault("prefix", PREFIX)
    return Reference()(host="127.0.0.1", port=server.port, password=server.password, **kw)


@pytest_asyncio.fixture
async def ours(redis_server):
    c = make_ours(redis_server)
    await c.connect()
    yield c
    await c.disconnect()


@pytest_asyncio.fixture
async def ref(redis_server):
    c = make_ref(redis_server)
    await c.connect()
    yield c
    await c.disconnect()


VALUES = [
    ("str", "hello"),
    ("empty str", ""),
    ("unicode", "héllo ☃ 😀 ключ 中文 \u2028 \x00 \"quoted\" \\"),
    ("int", 42),
    ("zero", 0),
    ("big int", 2**100),
    ("big negative int", -(10**50) - 1),
    ("float", 3.14159),
    ("float exp", 1.5e-300),
    ("negative zero", -0.0),
    ("inf", float("inf")),
    ("None", None),
    ("True", True),
    ("False", False),
    ("empty list", []),
    ("empty dict", {}),
    ("empty tuple", ()),
    ("tuple", (1, "two", 3.0)),
    ("nested tuple", ((1, 2), [3, (4, 5)])),
    ("list", [1, None, True, "x", 2.5]),
    ("dict", {"a": 1, "b": {"c": [1, 2, {"d": None}]}}),
    ("non-str dict keys", {1: "one", 2.5: "two and a half", None: "none", False: "f"}),
    ("nested", {"users": [{"name": "Zoë", "tags": ("a", "b"), "meta": {}}], "n": [[[]]]}),
    ("big value", {"blob": "x" * 1_000_000}),
]
IDS = [n for n, _ in VALUES]
PARAMS = [v for _, v in VALUES]


def expected(value):
    return json.loads(json.dumps(value))


# ---------------------------------------------------------------------- values


@pytest.mark.parametrize("value", PARAMS, ids=IDS)
async def test_ours_writes_reference_reads(ours, ref, redis_server, value):
    await ours.set("k", value)
    got = await ref.get("k")
    assert got == expected(value)
    assert type(got) is type(expected(value))
    assert await ref.get_many(["k"]) == {"k": expected(value)}
    assert await ref.exists("k") is True


@pytest.mark.parametrize("value", PARAMS, ids=IDS)
async def test_reference_writes_ours_reads(ours, ref, value):
    await ref.set("k", value)
    got = await ours.get("k")
    assert got == expected(value)
    assert type(got) is type(expected(value))
    assert await ours.get_many(["k"]) == {"k": expected(value)}
    assert await ours.exists("k") is True


@pytest.mark.parametrize("value", PARAMS, ids=IDS)
async def test_same_stored_text(ours, ref, redis_server, value):
    await ours.set("a", value)
    await ref.set("b", value)
    assert redis_server.command("GET", PREFIX + "a") == redis_server.command("GET", PREFIX + "b")


async def test_nan(ours, ref):
    await ours.set("a", float("nan"))
    await ref.set("b", float("nan"))
    assert math.isnan(await ref.get("a"))
    assert math.isnan(await ours.get("b"))


async def test_set_many_get_many_both_ways(ours, ref):
    items = {f"k{i}": {"i": i, "t": (i, str(i))} for i in range(50)}
    await ours.set_many(items)
    assert await ref.get_many(list(items) + ["missing"]) == {k: expected(v) for k, v in
                                                             items.items()}
    items2 = {f"r{i}": [i, None] for i in range(50)}
    await ref.set_many(items2)
    assert await ours.get_many(list(items2) + ["missing"]) == items2


async def test_stored_null_in_get_many_both(ours, ref):
    await ours.set("n", None)
    assert await ref.get_many(["n"]) == {"n": None}
    assert await ours.get_many(["n"]) == {"n": None}


async def test_delete_and_exists_both_ways(ours, ref):
    await ours.set("a", 1)
    await ref.set("b", 2)
    assert await ref.exists("a") is True and await ours.exists("b") is True
    assert await ref.delete("a") is True
    assert await ours.delete("b") is True
    assert await ours.exists("a") is False and await ref.exists("b") is False
    assert await ours.delete("a") is False and await ref.delete("b") is False


KEYS = ["plain", "with space", "new\nline", "ключ 😀", "glob*?[x]\\", 42, 1.5, (1, "a"), None]


@pytest.mark.parametrize("key", KEYS, ids=repr)
async def test_same_redis_key(ours, ref, key):
    await ours.set(key, "ours")
    assert await ref.get(key) == "ours"
    await ref.set(key, "ref")
    assert await ours.get(key) == "ref"
    assert await ours.get(str(key)) == "ref"  # both use prefix + str(key)


async def test_format_key_like_the_reference(ours, ref, redis_server):
    class K:
        def __format__(self, spec):
            return "formatted"

        def __str__(self):
            return "stringified"

    await ref.set(K(), "r")
    assert await ours.get(K()) == "r"
    assert await ours.get("formatted") == "r"


async def test_other_prefix_not_shared(redis_server, ref):
    async with make_ours(redis_server, prefix="other:") as other:
        await ref.set("k", 1)
        assert await other.get("k") is None


async def test_non_json_text_both_none(ours, ref, redis_server):
    redis_server.command("SET", PREFIX + "bad", "not json")
    assert await ours.get("bad") is None
    assert await ref.get("bad") is None
    assert await ours.get_many(["bad"]) == {}
    assert await ref.get_many(["bad"]) == {}


async def test_unencodable_both_raise_and_write_nothing(ours, ref, redis_server):
    with pytest.raises(CacheError):
        await ours.set("a", object())
    with pytest.raises(ReferenceCacheError()):
        await ref.set("b", object())
    assert redis_server.command("KEYS", "*") == []


# ---------------------------------------------------------------------- ttl


def ttl(server, key):
    return server.command("TTL", PREFIX + key)


@pytest.mark.parametrize("kw, ttl_ms", [({}, 3_600_000), ({"ttl": None}, 3_600_000),
                                        ({"ttl": 100}, 100_000), ({"ttl": 1}, 1000),
                                        ({"ttl": 0}, None)], ids=lambda v: repr(v))
async def test_ttl_equivalent(ours, ref, redis_server, kw, ttl_ms):
    """Both store the same expiry: ttl_ms after each one's write (each checked against
    the server's clock around its own write), or none."""
    with ExpiryWindow(redis_server) as wa:
        await ours.set("a", 1, **kw)
    with ExpiryWindow(redis_server) as wb:
        await ref.set("b", 1, **kw)
    if ttl_ms is None:
        assert ttl(redis_server, "a") == ttl(redis_server, "b") == -1
    else:
        wa.expiry(PREFIX + "a", ttl_ms)
        wb.expiry(PREFIX + "b", ttl_ms)
    if ttl_ms != 1000:  # (1 s: each may be gone already; test_expired_for_both)
        assert await ours.exists("b") is True and await ref.exists("a") is True


@pytest.mark.parametrize("default_ttl", [None, 0, 300], ids=repr)
async def test_default_ttl_equivalent(redis_server, default_ttl):
    o = make_ours(redis_server, default_ttl=default_ttl)
    r = make_ref(redis_server, default_ttl=default_ttl)
    with ExpiryWindow(redis_server) as w:
        await o.set("a", 1)
        await r.set("b", 1)
        await o.set_many({"c": 1})
        await r.set_many({"d": 1})
    if default_ttl:
        for k in "abcd":
            w.expiry(PREFIX + k, default_ttl * 1000)
    else:
        assert [ttl(redis_server, k) for k in "abcd"] == [-1, -1, -1, -1]
    await o.disconnect()
    await r.disconnect()


async def test_set_many_ttl_equivalent(ours, ref, redis_server):
    with ExpiryWindow(redis_server) as w:
        await ours.set_many({"a": 1, "b": 2}, ttl=200)
        await ref.set_many({"c": 1, "d": 2}, ttl=200)
    for k in "abcd":
        w.expiry(PREFIX + k, 200_000)
    await ours.set_many({"e": 1}, ttl=0)
    await ref.set_many({"f": 1}, ttl=0)
    assert ttl(redis_server, "e") == ttl(redis_server, "f") == -1


async def test_expired_for_both(ours, ref, redis_server):
    await ref.set("r", 1, ttl=1)
    await ours.set("o", 1, ttl=1)
    deadline = time.monotonic() + 10
    while redis_server.command("EXISTS", PREFIX + "r", PREFIX + "o") and \
            time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await ours.get("r") is None and await ref.get("o") is None


async def test_fractional_ttl_ours_uses_px(ours, ref, redis_server):
    # the reference's SETEX only takes whole seconds; ours stores a fraction with PX
    with Monitor(redis_server) as mon:
        with ExpiryWindow(redis_server) as w:
            await ours.set("a", 1, ttl=100.5)
        assert mon.wait_for(lambda cmd: cmd[0] == "SET") == [
            "SET", PREFIX + "a", "1", "PX", "100500"]
    w.expiry(PREFIX + "a", 100_500)
    assert await ref.get("a") == 1


# ---------------------------------------------------------------------- statistics


async def test_reference_hits_seen_by_ours(ours, ref, redis_server):
    await ref.set("k", 1)
    await ref.get("k")
    await ref.get("k")
    await ref.get("missing")
    stats = await ours.get_stats()
    assert (stats["hits"], stats["misses"], stats["hit_rate"]) == (2, 1, 66.67)


async def test_our_hits_seen_by_reference_after_flush(ours, ref, redis_server):
    await ours.set("k", 1)
    await ours.get("k")
    await ours.get_many(["k", "nope"])
    await ours.get_stats()  # flushes
    stats = await ref.get_stats()
    assert (stats["hits"], stats["misses"]) == (2, 1)


async def test_our_hits_seen_by_reference_after_background_flush(ours, ref):
    await ours.get("nope")
    await ours.get("nope")
    deadline = time.monotonic() + 10
    while (await ref.get_stats())["misses"] != 2:
        assert time.monotonic() < deadline, "never flushed"
        await asyncio.sleep(0.1)


async def test_our_hits_seen_by_reference_after_disconnect(redis_server, ref):
    o = make_ours(redis_server)
    await o.get("nope")
    await o.disconnect()
    assert (await ref.get_stats())["misses"] == 1


async def test_stats_aggregate_both(ours, ref, redis_server):
    await ours.set("a", 1)
    await ref.set("b", 2)
    await ours.get("a")   # ours: 1 hit
    await ours.get("b")   # ours: 2 hits
    await ref.get("a")    # ref: 1 hit
    await ref.get("zz")   # ref: 1 miss
    await ours.get("zz")  # ours: 1 miss
    so = await ours.get_stats()
    sr = await ref.get_stats()
    assert so == sr
    assert so == {"type": "redis", "size": 3, "hits": 3, "misses": 2, "hit_rate": 60.0,
                  "connected": True}
    assert hgetall(redis_server, PREFIX + "stats") == {"hits": 3, "misses": 2}


async def test_get_stats_shape_same_as_reference(ours, ref):
    so, sr = await ours.get_stats(), await ref.get_stats()
    assert so == sr
    assert {k: type(v) for k, v in so.items()} == {k: type(v) for k, v in sr.items()}


async def test_get_stats_size_same(ours, ref):
    await ours.set_many({f"o{i}": i for i in range(1500)})
    await ref.set_many({f"r{i}": i for i in range(700)})
    so, sr = await ours.get_stats(), await ref.get_stats()
    assert so["size"] == sr["size"] == 2200


# ---------------------------------------------------------------------- clear


async def test_reference_clear_removes_ours(ours, ref, redis_server):
    await ours.set_many({f"k{i}": i for i in range(300)})
    await ours.get("k1")
    await ours.get_stats()
    redis_server.command("SET", "elsewhere", "1")
    await ref.clear()
    assert await ours.get("k1") is None
    assert (await ours.get_stats())["size"] == 1  # only the hash of the get just made
    assert redis_server.command("EXISTS", "elsewhere") == 1


async def test_ours_clear_removes_reference(ours, ref, redis_server):
    await ref.set_many({f"k{i}": i for i in range(300)})
    await ref.get("k1")  # creates the statistics hash
    redis_server.command("SET", "elsewhere", "1")
    await ours.clear()
    assert redis_server.command("KEYS", PREFIX + "*") == []
    assert await ref.get("k1") is None
    assert redis_server.command("EXISTS", "elsewhere") == 1


async def test_ours_clear_spares_what_the_reference_glob_would_take(redis_server):
    # deliberate difference 3: prefix "a*" - ours deletes keys starting with "a*" only
    r = make_ref(redis_server, prefix="a*")
    o = make_ours(redis_server, prefix="a*")
    await r.set("k", 1)
    redis_server.command("SET", "abc", "1")
    await o.clear()
    assert redis_server.command("KEYS", "*") == [b"abc"]
    await o.disconnect()
    await r.disconnect()


async def test_user_stats_key_read_by_reference(ours, ref):
    # deliberate difference 3: ours stores a user key "stats"; the reference reads it
    await ours.set("stats", {"user": True})
    assert await ref.get("stats") == {"user": True}
    assert "error" not in await ours.get_stats()


# ---------------------------------------------------------------------- connection


async def test_password_both():
    with RedisServer(password="s3cret") as server:
        o, r = make_ours(server), make_ref(server)
        await o.set("k", "ours")
        assert await r.get("k") == "ours"
        await o.disconnect()
        await r.disconnect()
        bad_o = RedisCache(host="127.0.0.1", port=server.port, password="wrong")
        bad_r = Reference()(host="127.0.0.1", port=server.port, password="wrong")
        with pytest.raises(CacheError, match="^Redis connection failed: "):
            await bad_o.connect()
        with pytest.raises(ReferenceCacheError(), match="^Redis connection failed: "):
            await bad_r.connect()


async def test_db_both(redis_server):
    o = make_ours(redis_server, db=3)
    r = make_ref(redis_server, db=3)
    r0 = make_ref(redis_server, db=0)
    await o.set("k", "db3")
    assert await r.get("k") == "db3"
    assert await r0.get("k") is None
    for c in (o, r, r0):
        await c.disconnect()


async def test_closed_port_both():
    with refused_port() as port:
        await closed_port_both(port)


async def closed_port_both(port):
    o = RedisCache(host="127.0.0.1", port=port, connect_timeout=2)
    r = Reference()(host="127.0.0.1", port=port)
    with pytest.raises(CacheError) as eo:
        await o.get("k")
    with pytest.raises(ReferenceCacheError()) as er:
        await r.get("k")
    common = f"Redis connection failed: Error 111 connecting to 127.0.0.1:{port}."
    assert str(eo.value).startswith(common)
    assert str(er.value).startswith(common)


async def test_password_on_server_without_one(redis_server):
    """Regression: the reference (redis-py 8: HELLO 3 AUTH default <pw>) connects when a
    password is given to a server that requires none; ours once failed on AUTH <pw>."""
    r = Reference()(host="127.0.0.1", port=redis_server.port, password="unused")
    await r.connect()  # the reference connects
    await r.disconnect()
    o = RedisCache(host="127.0.0.1", port=redis_server.port, password="unused")
    await o.connect()
    await o.disconnect()
