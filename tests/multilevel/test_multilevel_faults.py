"""MultiLevelCache over a failing L2 (README "MultiLevelCache API": L2 trouble).

A real redis-server that dies, stalls, freezes, refuses, answers with errors, or was
never there. The contract under test (README "MultiLevelCache API", "L2 trouble is not
the caller's trouble", and the table of "Errors"; ARCHITECTURE "MultiLevelCache
(multilevel.c, ml_l2.c, `_multilevel.py`)"), with our own InMemoryCache as L1 and our
own RedisCache as L2 (the fast path, all in C):
- `get` serves L1 hits without touching L2 (shown structurally: the awaitable finishes on
  its first send() and L2's in-flight count and command count do not move), and gives
  `None` for L1 misses, within socket_timeout (checked only as a generous hang bound);
- `get_many` gives L1's part, `exists`/`delete` give L1's answer, none of them raises;
- `set`/`set_many` write L1, then raise `CacheError` for L2 (as the reference does);
- every failed L2 request is counted in `stats()["l2_errors"]`, and nothing else is;
- once Redis is back, L2 is used again with no user action: a value written to Redis
  directly becomes readable through the cache (an L2 hit, promoted into L1).

Nothing asserts on elapsed time except hang detection: every await is bounded. No
verdict depends on how fast anything runs: a stall lasts until the test ends it, and
phases of a load follow its progress (counters), not the clock.
"""
from __future__ import annotations

import asyncio
import collections
import random
import time
from unittest.mock import AsyncMock

import pytest

from bruno_memory_c import CacheError, InMemoryCache, MultiLevelCache, RedisCache
from bruno_memory_c.testing import RedisServer
from tests.support import (
    ALL_TRANSPORTS, HANG, RECOVER, TIMEOUT, bounded_by, cache_maker, drive, ml_counters, on_the_connection,
    stalled, until, wait_in_flight_zero,
)

BOUND = TIMEOUT + 3.0    # "within socket_timeout", as a liveness bound (not a speed check)
PREFIX = "mlf:"          # (also the make_ml fixture's, multilevel/conftest.py)
pytestmark = pytest.mark.usefixtures("quiet_cache_logger")  # (failures are logged)
#: Every test on a redis_server runs over plaintext and over TLS (conftest.py).
TRANSPORTS = ALL_TRANSPORTS

make_l2 = cache_maker(prefix=PREFIX, socket_timeout=TIMEOUT, connect_timeout=TIMEOUT)
bounded = bounded_by(HANG)

STATS_KEYS = {"type", "l1_hits", "l2_hits", "misses", "hit_rate", "l2_errors", "promotions",
              "invalidations", "l1_flushes", "l1", "l2"}
L2_STATS_KEYS = {"errors", "timeouts", "reconnects", "connected", "in_flight"}


# ---------------------------------------------------------------------- helpers


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


async def l2_works(m: MultiLevelCache, tag: str) -> bool:
    """Does a write through the cache reach L2 right now (set raises nothing)?"""
    try:
        await bounded(m.set(f"probe:{tag}", [tag]))
        return True
    except CacheError:
        return False


async def wait_until_l2_takes_writes(m: MultiLevelCache, limit: float = RECOVER) -> None:
    """Write a new probe key through the cache until L2 takes it (l2_works): L2 is used
    again."""
    deadline = time.monotonic() + limit
    attempt = 0
    while not await l2_works(m, f"w{attempt}"):
        attempt += 1
        assert time.monotonic() < deadline, f"L2 not used again within {limit}s: {m.stats()}"
        await asyncio.sleep(0.05)


async def assert_l2_used_again(m: MultiLevelCache, l1: InMemoryCache, server: RedisServer,
                               tag: str) -> None:
    """A value written to Redis directly (not through the cache) is readable through it:
    an L1 miss that L2 answers, counted as an L2 hit and promoted into L1."""
    key = f"direct-{tag}"
    if m.coherent:
        await tracked(m, server)
    heard = m.stats()["invalidations"]
    assert server.command("SET", PREFIX + key, '"v"') == "OK"
    if m.coherent:
        # (the SET's invalidation first: arriving during the read, it would rightly
        # keep the read from being promoted)
        await until(lambda: m.stats()["invalidations"] > heard, "the SET's invalidation")
    before = ml_counters(m)
    assert await bounded(m.get(key)) == "v"
    d = delta(before, ml_counters(m))
    assert d.get("l2_hits") == 1 and d.get("promotions") == 1, d
    assert "l2_errors" not in d, d
    assert drive(l1.get(key)) == "v"  # promoted


async def tracked(m: MultiLevelCache, server: RedisServer) -> None:
    """Until the server tracks for m: a probe key set until its invalidation is heard
    (on a loaded machine tracking may come on just after start(), or after L2 is back;
    a probe's message is heard within a second or was never to come)."""
    deadline = time.monotonic() + RECOVER
    while True:
        heard = m.stats()["invalidations"]
        assert server.command("SET", PREFIX + "probe", "1") == "OK"
        try:
            await until(lambda: m.stats()["invalidations"] > heard, "a probe's message", 1.0)
            return
        except AssertionError:
            assert time.monotonic() < deadline, "the server never tracked for the cache"


def assert_stats_shape(m: MultiLevelCache) -> dict:
    s = m.stats()
    assert set(s) == STATS_KEYS, s
    assert s["type"] == "multi_level"
    assert L2_STATS_KEYS <= set(s["l2"]), s["l2"]
    assert s["l1"]["type"] == "in_memory"
    return s


def l1_hit_without_suspending(m: MultiLevelCache, l2: RedisCache, key, expected) -> None:
    """get(key) is an L1 hit answered on its first send(): the task would not suspend,
    and L2 sees nothing: no request made (its in-flight count does not move) and no
    read counted. (Not its command count: the I/O thread adds statistics flushes to it
    whenever their second comes.)"""
    before = l2.stats()
    aw = m.get(key)
    with pytest.raises(StopIteration) as stop:
        aw.send(None)
    assert stop.value.value == expected
    after = l2.stats()
    assert after["in_flight"] == before["in_flight"]
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


# ------------------------------------------------------------- L2 dead: each method


async def test_every_method_with_l2_killed(redis_server, make_ml):
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    await bounded(m.set_many({"hot": "H", "hot2": "H2", "gone": "G"}))
    assert await bounded(m.get("hot")) == "H"
    redis_server.kill()
    await asyncio.sleep(0)

    # get: an L1 hit never involves L2 (no error counted), an L1 miss gives None.
    before = ml_counters(m)
    assert await bounded(m.get("hot")) == "H"
    assert delta(before, ml_counters(m)) == {"l1_hits": 1}
    before = ml_counters(m)
    assert await bounded(m.get("cold"), BOUND) is None
    assert delta(before, ml_counters(m)) == {"misses": 1, "l2_errors": 1}

    # get_many: L1's part only.
    before = ml_counters(m)
    assert await bounded(m.get_many(["hot", "cold", "hot2"]), BOUND) == {"hot": "H",
                                                                         "hot2": "H2"}
    assert delta(before, ml_counters(m)) == {"l1_hits": 2, "misses": 1, "l2_errors": 1}
    before = ml_counters(m)
    assert await bounded(m.get_many(["hot", "hot2"])) == {"hot": "H", "hot2": "H2"}
    assert delta(before, ml_counters(m)) == {"l1_hits": 2}
    before = ml_counters(m)
    assert await bounded(m.get_many(["cold", "cold2"]), BOUND) == {}
    assert delta(before, ml_counters(m)) == {"misses": 2, "l2_errors": 1}

    # exists: L1's answer; never raises.
    before = ml_counters(m)
    assert await bounded(m.exists("hot")) is True
    assert delta(before, ml_counters(m)) == {}
    assert await bounded(m.exists("cold"), BOUND) is False
    assert delta(before, ml_counters(m)) == {"l2_errors": 1}

    # delete: L1's answer (l1_result or a failed L2's False); never raises.
    before = ml_counters(m)
    assert await bounded(m.delete("gone"), BOUND) is True
    assert drive(l1.get("gone")) is None
    assert await bounded(m.delete("cold"), BOUND) is False
    assert delta(before, ml_counters(m)) == {"l2_errors": 2}

    # set / set_many: L1 written, then CacheError for L2.
    before = ml_counters(m)
    with pytest.raises(CacheError):
        await bounded(m.set("s", [1, 2]), BOUND)
    assert drive(l1.get("s")) == [1, 2]
    assert await bounded(m.get("s")) == [1, 2]  # and served from L1 at once
    with pytest.raises(CacheError):
        await bounded(m.set_many({"a": 1, "b": {"x": 2}}), BOUND)
    assert drive(l1.get_many(["a", "b"])) == {"a": 1, "b": {"x": 2}}
    assert delta(before, ml_counters(m)) == {"l2_errors": 2, "l1_hits": 1}

    # clear: as the reference (L1 cleared, then L2's CacheError), counted too.
    before = ml_counters(m)
    with pytest.raises(CacheError):
        await bounded(m.clear(), BOUND)
    assert l1.stats()["size"] == 0
    assert delta(before, ml_counters(m)) == {"l2_errors": 1}

    # get_stats gives L2's error form rather than raising; stats() is plain.
    gs = await bounded(m.get_stats(), BOUND)
    assert gs["type"] == "multi_level" and gs["l1"]["type"] == "in_memory"
    assert gs["l2"]["type"] == "redis" and "error" in gs["l2"], gs
    s = assert_stats_shape(m)
    assert s["l2"]["connected"] is False
    assert s["l2"]["errors"] >= s["l2_errors"] > 0
    assert s["promotions"] == 0  # nothing a failed read gave was promoted
    await wait_in_flight_zero(l2)


async def test_every_method_concurrently_with_l2_killed(redis_server, make_ml):
    """Many requests of every kind failing at once: each gives L1's answer or raises
    CacheError (set/set_many only), and each failed L2 request is counted once."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    n = 60
    await bounded(m.set_many({f"h{i}": [i] for i in range(n)}))
    redis_server.kill()
    before = ml_counters(m)
    aws = []
    for i in range(n):
        aws += [m.get(f"h{i}"), m.get(f"c{i}"), m.get_many([f"h{i}", f"c{i}"]),
                m.exists(f"h{i}"), m.exists(f"c{i}"), m.delete(f"c{i}"),
                m.set(f"s{i}", i), m.set_many({f"t{i}": i})]
    results = await bounded(asyncio.gather(*aws, return_exceptions=True))
    for i in range(n):
        hot, cold, many, ex_hot, ex_cold, deleted, set_, set_many = results[8 * i:8 * i + 8]
        assert hot == [i] and cold is None and many == {f"h{i}": [i]}, results[8 * i:8 * i + 8]
        assert ex_hot is True and ex_cold is False and deleted is False
        assert isinstance(set_, CacheError) and isinstance(set_many, CacheError)
    assert drive(l1.get_many([f"s{i}" for i in range(n)])) == {f"s{i}": i for i in range(n)}
    assert drive(l1.get_many([f"t{i}" for i in range(n)])) == {f"t{i}": i for i in range(n)}
    # L2 requests per round: get(cold), get_many (cold part), exists(cold), delete,
    # set, set_many; the L1 hits (get, exists) never reach L2.
    d = delta(before, ml_counters(m))
    assert d == {"l1_hits": 2 * n, "misses": 2 * n, "l2_errors": 6 * n}, d
    await wait_in_flight_zero(l2)


async def test_l2_killed_then_restarted_is_used_again(redis_server, make_ml):
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    await assert_l2_used_again(m, l1, redis_server, "before")
    for cycle in range(2):
        redis_server.kill()
        assert await bounded(m.get(f"cold{cycle}"), BOUND) is None
        with pytest.raises(CacheError):
            await bounded(m.set(f"k{cycle}", cycle), BOUND)
        errors = m.stats()["l2_errors"]
        assert errors > 0
        await asyncio.to_thread(redis_server.restart)
        await wait_until_l2_takes_writes(m)  # no start()/connect(): it comes back by itself
        await assert_l2_used_again(m, l1, redis_server, f"after{cycle}")
        # writes reach L2 again: an L2-only read of them works and is right
        await bounded(m.set(f"w{cycle}", {"cycle": cycle}))
        drive(l1.delete(f"w{cycle}"))
        assert await bounded(m.get(f"w{cycle}")) == {"cycle": cycle}
    assert l2.stats()["reconnects"] >= 2


async def test_kill9_mid_load_then_restart(redis_server, make_ml):
    """200 tasks loop over set/get/get_many/exists/delete on their own keys through a
    cache whose L1 is smaller than the working set (so L2 is read, and promoted from, all
    the time); Redis is SIGKILLed under them and restarted on the same port. No task
    hangs; get/get_many/exists/delete never raise; set raises only CacheError; every
    value read is the task's own, no older than its last successful write and no newer
    than its last attempted one; l2_errors grows; afterwards L2 is used again. The
    phases follow the load's progress: every task has written to L2 before the kill,
    every task has seen a write fail before the restart, and every task has written to
    the new server before the load stops."""
    m, l1, l2 = make_ml(redis_server, l1_size=64)
    await bounded(m.start())
    before = ml_counters(m)
    stop = False
    seen = collections.Counter()
    nworkers = 200
    phase = {"name": "before"}
    progress = {name: set() for name in ("before", "dead", "after")}

    def check_value(w, v, last_ok, last_attempt):
        assert isinstance(v, list) and v[0] == w, (w, v)
        assert last_ok <= v[1] <= last_attempt, (w, v, last_ok, last_attempt)

    async def worker(w: int) -> int:
        key, n, last_ok, last_attempt = f"w{w}", 0, -1, -1
        await bounded(m.set(key, [w, -1]))
        while not stop:
            n += 1
            op = n % 6
            failed = False
            try:
                if op == 0:
                    last_attempt = n
                    try:
                        assert await bounded(m.set(key, [w, n])) is None
                        last_ok = n
                        seen["set ok"] += 1
                        if phase["name"] != "dead":
                            progress[phase["name"]].add(w)
                    except CacheError:
                        seen["set failed"] += 1
                        failed = True
                        if phase["name"] == "dead":
                            progress["dead"].add(w)
                elif op == 1:
                    r = await bounded(m.get_many([key, f"absent{w}"]))
                    assert set(r) <= {key}, r
                    if key in r:
                        check_value(w, r[key], last_ok, last_attempt)
                elif op == 2:
                    assert await bounded(m.exists(key)) in (True, False)
                elif op == 3:
                    assert await bounded(m.delete(f"other{w}")) in (True, False)
                else:
                    v = await bounded(m.get(key))
                    if v is None:
                        seen["get none"] += 1
                        failed = True
                    else:
                        check_value(w, v, last_ok, last_attempt)
                        seen["get ok"] += 1
            except CacheError:
                raise AssertionError(f"op {op} raised CacheError")
            if failed:
                await asyncio.sleep(0.002)  # fail-fast loops must not starve the loop
        return n

    workers = [asyncio.create_task(worker(w)) for w in range(nworkers)]
    try:
        await until(lambda: len(progress["before"]) == nworkers, "every task wrote", HANG)
        await until(lambda: m.stats()["l2_hits"] > before["l2_hits"], "L2 hits", HANG)
        mid = ml_counters(m)
        phase["name"] = "dead"
        redis_server.kill()
        await until(lambda: len(progress["dead"]) == nworkers,
                    "every task saw a write fail", HANG)
        await asyncio.to_thread(redis_server.restart)
        await wait_until_l2_takes_writes(m)
        l2_hits_before = m.stats()["l2_hits"]
        phase["name"] = "after"
        await until(lambda: len(progress["after"]) == nworkers
                    and m.stats()["l2_hits"] > l2_hits_before,
                    "every task wrote to the new server, L2 hits", RECOVER)
        ok_before = seen["get ok"]
        await until(lambda: seen["get ok"] > ok_before, "reads answered", RECOVER)
    finally:
        stop = True
        counts = await bounded(asyncio.gather(*workers), 60)
    assert min(counts) > 0
    assert seen["set failed"] >= nworkers, seen
    after = ml_counters(m)
    assert mid["l2_hits"] > before["l2_hits"]  # L2 was really in use before the kill
    assert after["l2_errors"] > mid["l2_errors"]
    assert after["l2_hits"] > l2_hits_before  # and in use again after the restart
    assert l2.stats()["reconnects"] >= 1
    await wait_in_flight_zero(l2)
    await assert_l2_used_again(m, l1, redis_server, "after-load")
    # Every task's key works through both levels again, no user action needed.
    await bounded(m.set_many({f"w{w}": [w, -2] for w in range(nworkers)}))
    await bounded(l1.clear())
    got = await bounded(asyncio.gather(*(m.get(f"w{w}") for w in range(nworkers))))
    assert got == [[w, -2] for w in range(nworkers)]


async def test_reads_in_flight_when_l2_dies(redis_server, make_ml):
    """L1 misses waiting on L2 when it is killed. First with the reads certainly in
    flight (sent to the server while it was stalled, so unanswered): each gives None,
    each counts a miss and an L2 error, nothing is promoted. Then racing the kill: each
    gives its own value or None, and only right values are promoted into L1."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    data = {f"d{i}": {"i": i} for i in range(300)}
    await bounded(m.set_many(data))
    await bounded(l1.clear())
    before = ml_counters(m)
    with stalled(redis_server):
        commands = l2.stats()["commands"]
        pending = [asyncio.ensure_future(m.get(k)) for k in data]
        many = asyncio.ensure_future(m.get_many(list(data)[:50]))
        # GET + PTTL per get; MGET + a PTTL per key for get_many
        await on_the_connection(l2, commands, 2 * len(data) + 1 + 50)
        redis_server.kill()
    assert await bounded(asyncio.gather(*pending)) == [None] * len(data)
    assert await bounded(many) == {}
    assert l1.stats()["size"] == 0
    assert delta(before, ml_counters(m)) == {"misses": len(data) + 50,
                                          "l2_errors": len(data) + 1}
    await asyncio.to_thread(redis_server.restart)
    await wait_until_l2_takes_writes(m)
    for cycle in range(2):
        await bounded(m.set_many(data))
        await bounded(l1.clear())
        pending = [asyncio.ensure_future(m.get(k)) for k in data]
        many = asyncio.ensure_future(m.get_many(list(data)[:50]))
        await asyncio.sleep(0)
        redis_server.kill()
        got = await bounded(asyncio.gather(*pending))
        assert all(g is None or g == data[k] for g, k in zip(got, data)), got
        r = await bounded(many)
        assert all(data[k] == v for k, v in r.items()), r
        promoted = drive(l1.get_many(list(data)))
        assert all(data[k] == v for k, v in promoted.items())
        await asyncio.to_thread(redis_server.restart)
        await wait_until_l2_takes_writes(m)
    await wait_in_flight_zero(l2)


# ------------------------------------------------------------------ L2 stalled / frozen


async def test_stalled_l2_l1_hits_do_not_suspend(redis_server, make_ml):
    """L2 stalled (until the test ends the stall) with socket_timeout 0.5: L1 hits
    complete on their first send() while an L2 request is stuck in flight; L1 misses
    give None within the bound, each failure counted exactly once."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    hot = {f"hot{i}": [i, "h"] for i in range(20)}
    await bounded(m.set_many(hot))
    before = ml_counters(m)
    with stalled(redis_server):
        stuck_aw = m.get("cold-stuck")  # an L1 miss: the L2 request is made here
        assert l2.stats()["in_flight"] == 1
        stuck = asyncio.ensure_future(stuck_aw)
        for k, v in hot.items():
            l1_hit_without_suspending(m, l2, k, v)
        # the other L1-only answers do not suspend either
        assert drive(m.get_many(list(hot))) == hot
        assert drive(m.exists("hot0")) is True
        assert not stuck.done()  # (no loop iteration has run since it was made)
        assert l2.stats()["in_flight"] == 1
        assert delta(before, ml_counters(m)) == {"l1_hits": 2 * len(hot)}
        # L1 misses: None, within the bound, each failure counted
        assert await bounded(stuck, BOUND) is None
        colds = [f"cold{i}" for i in range(50)]
        got = await bounded(asyncio.gather(*(m.get(k) for k in colds)), BOUND)
        assert got == [None] * len(colds)
        r = await bounded(m.get_many(["hot1", "cold-x", "hot2"]), BOUND)
        assert r == {"hot1": hot["hot1"], "hot2": hot["hot2"]}
        assert await bounded(m.exists("cold-y"), BOUND) is False
        assert await bounded(m.delete("hot3"), BOUND) is True
        with pytest.raises(CacheError):
            await bounded(m.set("new", 1), BOUND)
        assert drive(l1.get("new")) == 1
        d = delta(before, ml_counters(m))
        assert d["l2_errors"] == 1 + len(colds) + 4, d
        assert d["misses"] == 1 + len(colds) + 1, d
        assert "promotions" not in d and "l2_hits" not in d, d
        assert l2.stats()["timeouts"] > 0
        # hits are still served without suspending after all those failures
        l1_hit_without_suspending(m, l2, "hot4", hot["hot4"])
    await wait_until_l2_takes_writes(m)
    await wait_in_flight_zero(l2)
    await assert_l2_used_again(m, l1, redis_server, "after-stall")


async def test_stall_late_replies_are_not_promoted_to_other_keys(redis_server, make_ml):
    """Replies the stalled server sends late, for reads that gave up, reach nobody:
    afterwards every key reads (and promotes) its own value from L2."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    data = {f"d{i}": {"i": i, "pad": "x" * (i % 7)} for i in range(100)}
    await bounded(m.set_many(data))
    await bounded(l1.clear())
    with stalled(redis_server):
        got = await bounded(asyncio.gather(*(m.get(k) for k in data)), BOUND)
        assert got == [None] * len(data)
        assert l1.stats()["size"] == 0  # nothing promoted from a failed read
    await wait_until_l2_takes_writes(m)
    before = ml_counters(m)
    got = await bounded(asyncio.gather(*(m.get(k) for k in data)))
    assert got == list(data.values())
    assert delta(before, ml_counters(m)) == {"l2_hits": len(data), "promotions": len(data)}
    assert drive(l1.get_many(list(data))) == data


@pytest.mark.parametrize("coherent", [True, False], ids=["coherent", "incoherent"])
async def test_write_during_stalled_read_wins(redis_server, make_ml, coherent):
    """A set of a key whose L2 read is stuck: the read gives None (timed out), the set
    raises CacheError after writing L1, and L1 keeps the written value while L2 is
    unreachable; once it is back, a coherent L1 lets it go (what Redis holds now is
    unknown: the invalidation channel was lost), an incoherent one keeps it."""
    m, l1, l2 = make_ml(redis_server, coherent=coherent)
    await bounded(m.start())
    await bounded(m.set("k", "old"))
    await bounded(l1.clear())
    with stalled(redis_server):
        commands = l2.stats()["commands"]
        read = asyncio.ensure_future(m.get("k"))
        await on_the_connection(l2, commands, 2)  # GET + PTTL sent, unanswered
        with pytest.raises(CacheError):
            await bounded(m.set("k", "new"), BOUND)
        assert await bounded(read, BOUND) is None
        l1_hit_without_suspending(m, l2, "k", "new")
        flushes = m.stats()["l1_flushes"]
    await wait_until_l2_takes_writes(m)
    if coherent:
        await until(lambda: m.stats()["l1_flushes"] > flushes, "the flush once tracked")
        assert drive(l1.get("k")) is None
    else:
        assert drive(l1.get("k")) == "new"


async def test_frozen_l2(redis_server, make_ml):
    """SIGSTOP: connections are accepted, nothing answers, reconnects hang too. L1 hits do
    not suspend, L1 misses give None within the bound, writes raise CacheError after
    L1; after SIGCONT, L2 is used again."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    await bounded(m.set("hot", "H"))
    before = ml_counters(m)
    with stalled(redis_server):
        for round_ in range(3):  # the first times out in flight, the rest reconnecting
            l1_hit_without_suspending(m, l2, "hot", "H")
            got = await bounded(asyncio.gather(*(m.get(f"c{round_}-{i}") for i in range(20))),
                                BOUND)
            assert got == [None] * 20
            assert await bounded(m.get_many(["hot", "x"]), BOUND) == {"hot": "H"}
            with pytest.raises(CacheError):
                await bounded(m.set(f"s{round_}", round_), BOUND)
        # per round: 20 gets, one get_many, one set
        assert delta(before, ml_counters(m)) == {"l1_hits": 6, "misses": 3 * 21,
                                              "l2_errors": 3 * 22}
    await wait_until_l2_takes_writes(m)
    await wait_in_flight_zero(l2)
    await assert_l2_used_again(m, l1, redis_server, "after-freeze")


async def test_cancel_while_l2_stalled(redis_server, make_ml):
    """Tasks cancelled while their L2 reads sit in a stalled server: the others give
    None, nothing is promoted, and afterwards reads are right."""
    m, l1, l2 = make_ml(redis_server, socket_timeout=1.0)
    await bounded(m.start())
    data = {f"d{i}": [i] for i in range(100)}
    await bounded(m.set_many(data))
    await bounded(l1.clear())
    with stalled(redis_server):
        commands = l2.stats()["commands"]
        tasks = [asyncio.ensure_future(m.get(k)) for k in data]
        await on_the_connection(l2, commands, 2 * len(data))
        assert all(t.cancel() for t in tasks[::2])  # all still waiting for L2
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True))
        assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
        assert results[1::2] == [None] * 50
        assert l1.stats()["size"] == 0
    await wait_until_l2_takes_writes(m)
    await wait_in_flight_zero(l2)
    got = await bounded(asyncio.gather(*(m.get(k) for k in data)))
    assert got == list(data.values())


# ------------------------------------------------------- never connected, other faults


async def test_never_connected_l2(reserved_port):
    """Server down from the start (nothing listens on the port), never start()ed: get
    gives None rather than raising (the reference's get would raise its connect()
    failure); reads give L1's answers; writes raise CacheError after L1; then a server
    appears on that port and L2 is used without any user action."""
    port = reserved_port.port  # nobody else's server until we start ours
    l1 = InMemoryCache()
    l2 = make_l2(port)
    m = MultiLevelCache(l1, l2)
    server = RedisServer(port=port)
    try:
        for _ in range(3):
            assert await bounded(m.get("a"), BOUND) is None
        assert await bounded(m.get_many(["a", "b"]), BOUND) == {}
        assert await bounded(m.exists("a"), BOUND) is False
        assert await bounded(m.delete("a"), BOUND) is False
        with pytest.raises(CacheError):
            await bounded(m.set("a", 1), BOUND)
        assert await bounded(m.get("a")) == 1          # from L1
        assert await bounded(m.delete("a"), BOUND) is True
        with pytest.raises(CacheError):
            await bounded(m.set_many({"b": 2, "c": 3}), BOUND)
        assert await bounded(m.get_many(["b", "c", "d"]), BOUND) == {"b": 2, "c": 3}
        assert await bounded(m.exists("b")) is True
        s = assert_stats_shape(m)
        assert s["l2_errors"] == 10, s
        assert s["l2"]["connected"] is False
        # many at once, too
        got = await bounded(asyncio.gather(*(m.get(f"x{i}") for i in range(100))), BOUND)
        assert got == [None] * 100
        assert m.stats()["l2_errors"] == 110
        # start() connects L2: its failure is the reference's (CacheError)
        with pytest.raises(CacheError):
            await bounded(m.start(), BOUND)
        # Now Redis appears: L2 is used with no user action.
        reserved_port.release()
        await asyncio.to_thread(server.start)
        server.command("SET", PREFIX + "k", '"v"')
        deadline = time.monotonic() + RECOVER
        while (v := await bounded(m.get("k"))) is None:
            assert time.monotonic() < deadline, m.stats()
            await asyncio.sleep(0.05)
        assert v == "v"
        assert m.stats()["l2_hits"] == 1
        await bounded(m.set("after", [1]))
        assert server.command("GET", PREFIX + "after") == b"[1]"
    finally:
        await bounded(l2.disconnect())
        server.close()


async def test_l2_error_replies_are_counted(redis_server, make_ml):
    """Errors Redis answers with (WRONGTYPE, OOM) are L2 failures too: get gives None,
    set raises CacheError after L1, both counted; L1 hits are unaffected."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    await bounded(m.set("hot", "H"))
    redis_server.command("HSET", PREFIX + "hash", "f", "v")
    before = ml_counters(m)
    assert await bounded(m.get("hash")) is None          # WRONGTYPE
    assert delta(before, ml_counters(m)) == {"misses": 1, "l2_errors": 1}
    before = ml_counters(m)
    # (MGET answers nil, not WRONGTYPE, for a key of another type: a plain miss)
    assert await bounded(m.get_many(["hot", "hash"])) == {"hot": "H"}
    assert delta(before, ml_counters(m)) == {"l1_hits": 1, "misses": 1}
    redis_server.command("CONFIG", "SET", "maxmemory", "1")
    try:
        before = ml_counters(m)
        with pytest.raises(CacheError):
            await bounded(m.set("big", "x" * 1000))     # OOM command not allowed
        assert drive(l1.get("big")) == "x" * 1000
        with pytest.raises(CacheError):
            await bounded(m.set_many({"b1": 1, "b2": 2}))
        assert drive(l1.get_many(["b1", "b2"])) == {"b1": 1, "b2": 2}
        assert delta(before, ml_counters(m)) == {"l2_errors": 2}
        l1_hit_without_suspending(m, l2, "hot", "H")
    finally:
        redis_server.command("CONFIG", "SET", "maxmemory", "0")
    await bounded(m.set("ok", 1))  # L2 takes writes again
    await assert_l2_used_again(m, l1, redis_server, "after-oom")


async def test_client_kill_with_reads_in_flight(redis_server, make_ml):
    """Our L2 connection is killed by the server while reads are in flight: each read
    gives its value or None, and the connection comes back by itself."""
    m, l1, l2 = make_ml(redis_server)
    await bounded(m.start())
    data = {f"d{i}": [i, "x"] for i in range(200)}
    await bounded(m.set_many(data))
    for _ in range(3):
        await bounded(l1.clear())
        pending = [asyncio.ensure_future(m.get(k)) for k in data]
        await asyncio.sleep(0)
        redis_server.command("CLIENT", "KILL", "TYPE", "normal")
        got = await bounded(asyncio.gather(*pending))
        assert all(g is None or g == data[k] for g, k in zip(got, data)), got
        await wait_until_l2_takes_writes(m)
    await wait_in_flight_zero(l2)
    await bounded(l1.clear())
    got = await bounded(asyncio.gather(*(m.get(k) for k in data)))
    assert got == list(data.values())


# ---------------------------------------------------------------- generic path


def failing_l2_mock(exc: Exception) -> AsyncMock:
    l2 = AsyncMock(spec=RedisCache)
    for name in ("get", "set", "delete", "exists", "get_many", "set_many", "clear"):
        getattr(l2, name).side_effect = exc
    return l2


async def test_generic_path_l2_failures_are_counted():
    """Any other L2 (an AsyncMock) is awaited as the reference awaits it: its exceptions
    reach the caller as they would with the reference, after L1 was used, and each is
    counted in l2_errors. L1 hits never reach it."""
    l1 = InMemoryCache()
    l2 = failing_l2_mock(CacheError("L2 down"))
    m = MultiLevelCache(l1, l2)
    drive(l1.set("hot", "H"))
    assert await bounded(m.get("hot")) == "H"
    l2.get.assert_not_awaited()
    with pytest.raises(CacheError):
        await bounded(m.get("cold"))
    with pytest.raises(CacheError):
        await bounded(m.set("s", 1))
    assert drive(l1.get("s")) == 1
    with pytest.raises(CacheError):
        await bounded(m.set_many({"a": 1}))
    assert drive(l1.get("a")) == 1
    with pytest.raises(CacheError):
        await bounded(m.delete("a"))
    assert drive(l1.get("a")) is None  # L1 deleted first, as the reference does
    assert await bounded(m.exists("hot")) is True
    with pytest.raises(CacheError):
        await bounded(m.exists("cold"))
    with pytest.raises(CacheError):
        await bounded(m.get_many(["hot", "cold"]))
    s = m.stats()
    assert s["l2_errors"] == 6, s
    # "cold" missed twice: get(), and get_many()'s one key missing from L1 (README,
    # "Counting": a key no answer came back for is a miss, on every path)
    assert s["l1_hits"] == 2 and s["misses"] == 2, s
    l2.set.assert_awaited_once_with("s", 1, None)
    l2.set_many.assert_awaited_once_with({"a": 1}, None)


async def test_generic_path_l2_returning_failure_values():
    """An L2 that fails the way our RedisCache reads fail (None, {}, False) is not an
    error for the caller: L1's answers come through."""
    l1 = InMemoryCache()
    l2 = AsyncMock(spec=RedisCache)
    l2.get.return_value = None
    l2.get_many.return_value = {}
    l2.exists.return_value = False
    l2.delete.return_value = False
    drive(l1.set_many({"hot": "H", "gone": 1}))
    m = MultiLevelCache(l1, l2)
    assert await bounded(m.get("cold")) is None
    assert await bounded(m.get_many(["hot", "cold"])) == {"hot": "H"}
    assert await bounded(m.exists("cold")) is False
    assert await bounded(m.delete("gone")) is True
    l2.get_many.assert_awaited_once_with(["cold"])
    assert m.stats()["misses"] == 2


# ---------------------------------------------------------------- mixed random faults


async def test_random_faults_under_load(redis_server, make_ml):
    """Kill, stall and CLIENT KILL in turn under a continuous mixed load: every await
    returns (a right value, L1's answer, or CacheError from a write), and at the end
    L2 is used again."""
    m, l1, l2 = make_ml(redis_server, l1_size=32)
    await bounded(m.start())
    rng = random.Random(7)
    stop = False
    bad = []

    async def worker(w):
        key = f"r{w}"
        n = 0
        while not stop:
            n += 1
            try:
                if n % 4 == 0:
                    await bounded(m.set(key, [w, n]))
                else:
                    v = await bounded(m.get(key))
                    if v is not None and v[0] != w:
                        bad.append((w, v))
            except CacheError:
                await asyncio.sleep(0.002)
            except Exception as e:  # noqa: BLE001 - anything else is a failure
                bad.append((w, repr(e)))
                return
            if rng.random() < 0.05:
                await asyncio.sleep(0.001)

    async def served():
        """The load is being answered by L2 (a few L2 hits more)."""
        hits = m.stats()["l2_hits"]
        await until(lambda: m.stats()["l2_hits"] >= hits + 20, "L2 hits", RECOVER)

    async def failing():
        """The fault shows in the load (a few L2 errors more)."""
        errors = m.stats()["l2_errors"]
        await until(lambda: m.stats()["l2_errors"] >= errors + 5, "L2 errors", HANG)

    tasks = [asyncio.create_task(worker(w)) for w in range(80)]
    try:
        await served()
        assert await asyncio.to_thread(redis_server.command, "CLIENT", "KILL",
                                       "TYPE", "normal") == 1
        await served()
        with stalled(redis_server):
            await failing()
        await served()
        redis_server.kill()
        await failing()
        await asyncio.to_thread(redis_server.restart)
        await wait_until_l2_takes_writes(m)
        await served()
    finally:
        stop = True
        await bounded(asyncio.gather(*tasks), 60)
    assert bad == []
    await wait_in_flight_zero(l2)
    await assert_l2_used_again(m, l1, redis_server, "after-random")


async def test_counting_is_the_same_on_both_paths_when_l2_fails(closed_port):
    """One rule for both paths (README, "Counting"): every key L1 did not have counts
    once — l2_hits if the answer had it, else a miss (L2 did not have it, failed, or
    the call was cancelled first) — and each L2 call that fails adds one l2_error.
    Over our RedisCache (fast path, reads never raise) and over an L2 that raises
    (generic path, the error reaches the caller), get() and get_many() of keys L1
    lacks count the same. (Before: the generic get_many counted its error and no
    misses.)"""
    fast = MultiLevelCache(InMemoryCache(), make_l2(closed_port))
    generic = MultiLevelCache(InMemoryCache(), failing_l2_mock(CacheError("L2 down")))
    for m in (fast, generic):
        drive(m.l1.set("hot", "H"))
        for call in (lambda: m.get("cold"), lambda: m.get_many(["hot", "a", "b"])):
            try:
                await bounded(call())
            except CacheError:
                assert m is generic
    assert ml_counters(fast) == ml_counters(generic) == {
        "l1_hits": 1, "l2_hits": 0, "misses": 3, "l2_errors": 2, "promotions": 0}


async def test_a_cancelled_generic_read_counts_its_keys_as_misses():
    """Cancelled while L2 has not answered: on the generic path the answer never comes
    back, so each key L1 did not have counts as a miss (no L2 error). (Before: nothing
    was counted. On the fast path the request completes anyway and counts by its
    answer.)"""
    l2 = AsyncMock(spec=RedisCache)
    never = asyncio.Event()

    async def hang(*args):
        await never.wait()

    l2.get.side_effect = hang
    l2.get_many.side_effect = hang
    m = MultiLevelCache(InMemoryCache(), l2)
    for call in (lambda: m.get("a"), lambda: m.get_many(["a", "b"])):
        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert ml_counters(m) == {"l1_hits": 0, "l2_hits": 0, "misses": 3, "l2_errors": 0,
                           "promotions": 0}
