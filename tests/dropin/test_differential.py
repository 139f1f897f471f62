"""Our InMemoryCache answers as bruno-memory's does (README "Differences from bruno-memory").

Differential tests: bruno_memory_c.InMemoryCache against the reference
bruno_memory.utils.cache.InMemoryCache (bruno-memory 0.1.5): everything the README does
not list as a difference behaves as the reference's (ARCHITECTURE "InMemoryCache
(inmemory.c)").

Both caches get the same random operations (seeded) with the same arguments and the
same value objects; every answer must be identical (values by identity, since both
store by reference), and get_stats() must be identical at checkpoints and at the end.

Time: ttl 0 means "expires immediately" in both (strict `expiry < now`, and some
microseconds always pass between a set and the next read); the other ttls (3600, 1800.5: a
fractional one) never expire within a run, however slow the machine (a 2.5 s ttl did, once,
under AddressSanitizer on a loaded machine: the two caches, read some microseconds apart,
then disagreed on whether it had passed). Nothing asserts on time.
"""
from __future__ import annotations

import asyncio
import random

import pytest

import bruno_memory_c

from tests.support.reference import reference_inmemory_cache

RefCache = reference_inmemory_cache()
OurCache = bruno_memory_c.InMemoryCache

SEEDS = [11, 22, 33, 44, 55]
N_OPS = 3000
MAX_SIZES = [1, 5, 50]
DEFAULT_TTLS = [None, 3600, 0]

# A small key pool, so that hits, overwrites, expirations and evictions all happen:
# ints, strs, and a few aliases equal to pool ints (True == 1 == 1.0, 2.0 == 2).
INT_KEYS = list(range(30))
STR_KEYS = [f"k{i}" for i in range(30)] + ["", "0", "1"]
ALIAS_KEYS = [True, False, 1.0, 2.0]
ABSENT_KEYS = ["never-set", -1, 10**30]
_MISSING = object()  # "argument not passed"
# ttl argument variants: omitted, None, 0, int, float.
TTL_CHOICES = [_MISSING, None, 0, 3600, 1800.5]


def _pick_key(rng: random.Random):
    r = rng.random()
    if r < 0.45:
        return rng.choice(INT_KEYS)
    if r < 0.92:
        return rng.choice(STR_KEYS)
    if r < 0.97:
        return rng.choice(ALIAS_KEYS)
    return rng.choice(ABSENT_KEYS)


class _Value:
    """A distinct object per stored value: answers are compared by identity."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"V{self.n}"


def _stats_counters(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "hit_rate"}


async def _compare_stats(ref, ours, where: str) -> None:
    rs = await ref.get_stats()
    os_ = await ours.get_stats()
    assert os_ == rs, f"get_stats() differs {where}: reference {rs!r}, ours {os_!r}"
    assert list(os_) == list(rs), f"get_stats() key order differs {where}"
    assert type(os_["hit_rate"]) is type(rs["hit_rate"]) is float
    # stats(): the same counters, hit_rate as a fraction.
    st = ours.stats()
    assert _stats_counters(st) == _stats_counters(rs), f"stats() differs {where}: {st!r} vs {rs!r}"
    total = rs["hits"] + rs["misses"]
    expected_rate = rs["hits"] / total if total else 0.0
    assert st["hit_rate"] == pytest.approx(expected_rate, abs=1e-12)
    ours._check_consistency()


def _same(a, b) -> bool:
    """Identity for values (both caches hold the same objects), == for the rest."""
    if a is b:
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b) or [type(k) for k in a] != [type(k) for k in b]:
            return False
        return all(a[k] is b[k] for k in a)
    return False


async def _run_random(seed: int, max_size: int, default_ttl, n_ops: int = N_OPS) -> dict:
    rng = random.Random(f"{seed}-{max_size}-{default_ttl}")
    ref = RefCache(max_size=max_size, default_ttl=default_ttl)
    ours = OurCache(max_size=max_size, default_ttl=default_ttl)
    counter = 0
    counts: dict[str, int] = {}
    log: list[str] = []  # the last operations, for the failure message

    def new_value():
        nonlocal counter
        counter += 1
        return None if rng.random() < 0.08 else _Value(counter)

    def ttl_kwargs():
        ttl = rng.choice(TTL_CHOICES)
        if ttl is _MISSING:
            return (), {}
        if rng.random() < 0.5:
            return (ttl,), {}
        return (), {"ttl": ttl}

    for i in range(n_ops):
        r = rng.random()
        if r < 0.30:
            op, key = "get", _pick_key(rng)
            args, kwargs = (key,), {}
        elif r < 0.55:
            op, key = "set", _pick_key(rng)
            targs, kwargs = ttl_kwargs()
            args = (key, new_value()) + targs
        elif r < 0.63:
            op = "delete"
            args, kwargs = (_pick_key(rng),), {}
        elif r < 0.73:
            op = "exists"
            args, kwargs = (_pick_key(rng),), {}
        elif r < 0.74:
            op = "clear"
            args, kwargs = (), {}
        elif r < 0.83:
            op = "get_many"
            keys = [_pick_key(rng) for _ in range(rng.randint(0, 12))]
            if keys and rng.random() < 0.5:  # duplicates
                keys += rng.sample(keys, k=rng.randint(1, len(keys)))
                rng.shuffle(keys)
            if rng.random() < 0.3:
                keys.append(rng.choice(ABSENT_KEYS))
            seq = tuple(keys) if rng.random() < 0.2 else keys
            args, kwargs = (seq,), {}
        elif r < 0.92:
            op = "set_many"
            items = {_pick_key(rng): new_value() for _ in range(rng.randint(0, 12))}
            targs, kwargs = ttl_kwargs()
            args = (items,) + targs
        elif r < 0.94:
            # An unhashable key: TypeError from both, and no change anywhere.
            op = rng.choice(["get", "set", "delete", "exists"])
            bad = [rng.randint(0, 3)]
            args = (bad, new_value()) if op == "set" else (bad,)
            kwargs = {}
            log.append(f"{i}: {op}{args!r} (unhashable)")
            with pytest.raises(TypeError):
                await getattr(ref, op)(*args)
            with pytest.raises(TypeError):
                await getattr(ours, op)(*args, **kwargs)
            counts["unhashable"] = counts.get("unhashable", 0) + 1
            continue
        else:
            op, args, kwargs = "get_stats", (), {}

        log.append(f"{i}: {op}{args!r} {kwargs!r}" if kwargs else f"{i}: {op}{args!r}")
        del log[:-25]
        counts[op] = counts.get(op, 0) + 1
        if op == "get_stats":
            await _compare_stats(ref, ours, f"at op {i}\n" + "\n".join(log))
            continue
        want = await getattr(ref, op)(*args, **kwargs)
        got = await getattr(ours, op)(*args, **kwargs)
        assert _same(got, want), (
            f"seed={seed} max_size={max_size} default_ttl={default_ttl}: op {i} {op} gave "
            f"{got!r}, reference {want!r}\nlast operations:\n" + "\n".join(log)
        )
        if i % 100 == 99:
            await _compare_stats(ref, ours, f"at checkpoint {i}\n" + "\n".join(log))

    await _compare_stats(ref, ours, "at the end")
    return {"ops": counts, "stats": await ours.get_stats()}


@pytest.mark.parametrize("default_ttl", DEFAULT_TTLS, ids=lambda t: f"ttl={t}")
@pytest.mark.parametrize("max_size", MAX_SIZES, ids=lambda m: f"max={m}")
@pytest.mark.parametrize("seed", SEEDS)
async def test_random_operations_match_reference(seed, max_size, default_ttl):
    summary = await _run_random(seed, max_size, default_ttl)
    stats = summary["stats"]
    ops = summary["ops"]
    # The run exercised what it is meant to exercise.
    assert stats["hits"] > 0 and stats["misses"] > 0
    assert all(ops.get(op, 0) > 0 for op in
               ("get", "set", "delete", "exists", "get_many", "set_many", "get_stats"))
    if max_size < 30:
        assert stats["evictions"] > 0
    assert stats["expirations"] > 0  # ttl=0 sets expire on the next touch


async def test_random_operations_default_configuration():
    """InMemoryCache() with no arguments (max_size=1000, default_ttl=3600)."""
    rng = random.Random(7)
    ref, ours = RefCache(), OurCache()
    for i in range(2000):
        key = rng.randrange(1500)
        if rng.random() < 0.5:
            v = _Value(i)
            assert await ref.set(key, v) is None
            assert await ours.set(key, v) is None
        else:
            assert (await ours.get(key)) is (await ref.get(key))
    await _compare_stats(ref, ours, "default configuration")


async def test_get_many_duplicates_and_stored_none():
    """Duplicate keys count once per occurrence; a stored None is a hit but absent."""
    for ttl in (None, 0, 3600):
        ref = RefCache(max_size=10, default_ttl=ttl)
        ours = OurCache(max_size=10, default_ttl=ttl)
        a, b = _Value(1), _Value(2)
        for c in (ref, ours):
            await c.set("a", a)
            await c.set(1, b)
            await c.set("n", None)
        keys = ["a", "a", "missing", 1, True, 1.0, "n", "n", "missing"]
        want = await ref.get_many(keys)
        got = await ours.get_many(keys)
        assert _same(got, want), (ttl, got, want)
        await _compare_stats(ref, ours, f"get_many ttl={ttl}")


async def test_eviction_order_matches_reference():
    """Recency as the reference keeps it: get() and set() refresh, exists() does not."""
    ref, ours = RefCache(max_size=3, default_ttl=None), OurCache(max_size=3, default_ttl=None)
    script = [
        ("set", ("a", 1)), ("set", ("b", 2)), ("set", ("c", 3)),
        ("exists", ("a",)),          # no refresh: "a" is still the oldest
        ("set", ("d", 4)),           # evicts "a"
        ("get", ("b",)),             # refresh "b": oldest is now "c"
        ("set", ("e", 5)),           # evicts "c"
        ("set", ("d", 44)),          # overwrite refreshes "d": oldest is "b"
        ("set_many", ({"f": 6, "g": 7},)),  # evicts "b", then "e"
    ]
    for op, args in script:
        assert await getattr(ours, op)(*args) == await getattr(ref, op)(*args)
    keys = ["a", "b", "c", "d", "e", "f", "g"]
    assert [await ours.exists(k) for k in keys] == [await ref.exists(k) for k in keys]
    assert await ours.get_many(keys) == await ref.get_many(keys)
    await _compare_stats(ref, ours, "eviction order")


async def test_periodic_cleanup_matches_reference():
    """start() sweeps expired entries every cleanup_interval in both implementations.

    The reference's sweep is a task running `await asyncio.sleep(interval)` then
    `_remove_expired()`; ours is a loop timer. After 0.3 s with a 0.05 s interval, both
    have swept every entry that had a 0.01 s ttl, and none of the long-lived ones."""
    ref = RefCache(max_size=100, default_ttl=3600, cleanup_interval=0.05)
    ours = OurCache(max_size=100, default_ttl=3600, cleanup_interval=0.05)
    await ref.start()
    await ours.start()
    try:
        short = {f"short{i}": _Value(i) for i in range(20)}
        long_ = {f"long{i}": _Value(i) for i in range(10)}
        for c in (ref, ours):
            for k, v in short.items():
                await c.set(k, v, ttl=0.01)
            await c.set_many(long_)
            await c.set("none-ttl", None, None)
        await asyncio.sleep(0.3)
        rs, os_ = await ref.get_stats(), await ours.get_stats()
        assert os_ == rs
        assert rs["expirations"] == 20 and rs["size"] == 11
        # The swept entries are gone: reads are plain misses, not expirations.
        for k in list(short)[:3] + ["long0"]:
            assert (await ours.get(k)) is (await ref.get(k))
        assert not await ours.exists("short5") and not await ref.exists("short5")
        await _compare_stats(ref, ours, "after the periodic cleanup")
    finally:
        await ref.stop()
        await ours.stop()
    # Idempotent stop, as in the reference.
    await ref.stop()
    await ours.stop()
    await _compare_stats(ref, ours, "after stop")
