"""InMemoryCache with keys that run Python code (ARCHITECTURE "The LRU/TTL table (lru.c)").

Keys and values that run Python code inside the cache: __eq__ and __hash__ that raise
or mutate the cache, colliding hashes, keys equal across types, and __del__ methods that
re-enter the cache while an entry is evicted, overwritten, deleted, cleared or expired
(the re-entrancy rules of that section).

After each scenario the table must pass cache._check_consistency() and nothing may crash.
"""
import asyncio
import decimal
import fractions
import gc
import itertools
import random
import weakref

import pytest

from bruno_memory_c import InMemoryCache
from tests.support import drive


class Boom(Exception):
    pass


def make_key_class(hash_value=42):
    """A key class with a fixed hash, equal by name, and a per-class __eq__ hook."""

    class K:
        hook = None  # called as hook(self, other) before comparing
        eq_calls = 0

        def __init__(self, name):
            self.name = name

        def __hash__(self):
            return hash_value

        def __eq__(self, other):
            type(self).eq_calls += 1
            hook = type(self).hook
            if hook is not None:
                hook(self, other)
            if not isinstance(other, K):
                return NotImplemented
            return self.name == other.name

        def __repr__(self):
            return f"K({self.name!r})"

    return K


def one_shot(action):
    """A hook that runs action() the first time only."""
    fired = []

    def hook(self, other):
        if not fired:
            fired.append(True)
            action()

    hook.fired = fired
    return hook


@pytest.fixture(autouse=True)
def collect_cycles():
    """Caches and re-entrant values form cycles; collect them before the next test."""
    yield
    gc.collect()


def check(cache):
    cache._check_consistency()
    stats = cache.stats()
    assert 0 <= stats["size"]
    return stats


# ---------------------------------------------------------------------------- __eq__ raises


def test_eq_raises_propagates_and_changes_nothing():
    K = make_key_class()
    cache = InMemoryCache()
    a = K("a")
    drive(cache.set(a, 1))
    drive(cache.set(K("b"), 2))
    drive(cache.set("plain", 3))

    def raise_boom(self, other):
        raise Boom

    K.hook = raise_boom
    before = cache.stats()
    for call in (
        lambda: cache.get(K("c")),
        lambda: cache.set(K("c"), 9),
        lambda: cache.set(K("a"), 9),
        lambda: cache.delete(K("c")),
        lambda: cache.exists(K("c")),
        lambda: cache.get_many([K("c")]),
        lambda: cache.set_many({K("c"): 9}),
    ):
        with pytest.raises(Boom):
            call()
        assert cache.stats() == before
        check(cache)
    assert drive(cache.get("plain")) == 3  # other hash: no comparison
    # a stored key object is found by identity, without calling __eq__
    alone = InMemoryCache()
    drive(alone.set(a, 1))
    calls = K.eq_calls
    assert drive(alone.get(a)) == 1
    assert K.eq_calls == calls
    K.hook = None
    assert drive(cache.get_many([K("a"), K("b"), K("c")])) == {K("a"): 1, K("b"): 2}
    assert cache.stats()["size"] == 3
    check(cache)


def test_eq_raises_in_the_middle_of_batch_operations():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    def raise_boom(self, other):
        raise Boom

    K.hook = raise_boom
    with pytest.raises(Boom):
        cache.get_many(["x", K("b"), "y"])
    with pytest.raises(Boom):
        cache.set_many({"x": 1, K("b"): 2, "y": 3})
    check(cache)
    K.hook = None
    assert drive(cache.get(K("a"))) == 1


def test_eq_returning_non_bool_that_raises():
    class Bad:
        def __bool__(self):
            raise Boom

    class K:
        def __hash__(self):
            return 1

        def __eq__(self, other):
            return Bad()

    cache = InMemoryCache()
    k1 = K()
    drive(cache.set(k1, 1))
    with pytest.raises(Boom):
        cache.get(K())
    assert drive(cache.get(k1)) == 1
    check(cache)


# ---------------------------------------------------------------------------- __eq__ mutates the cache


@pytest.mark.parametrize("op", ["get", "set", "delete", "exists", "get_many", "set_many"])
def test_eq_clears_the_cache(op):
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))  # the cache holds the only reference to this key
    for i in range(50):
        drive(cache.set(("filler", i), i))
    K.hook = one_shot(lambda: cache.clear())
    probe = K("b")
    before = cache.stats()
    result = drive({
        "get": lambda: cache.get(probe),
        "set": lambda: cache.set(probe, "new"),
        "delete": lambda: cache.delete(probe),
        "exists": lambda: cache.exists(probe),
        "get_many": lambda: cache.get_many([probe]),
        "set_many": lambda: cache.set_many({probe: "new"}),
    }[op]())
    assert K.hook.fired
    stats = check(cache)
    if op in ("set", "set_many"):
        assert result is None
        assert stats["size"] == 1
        K.hook = None
        assert drive(cache.get(K("b"))) == "new"
    else:
        assert stats["size"] == 0
        assert result == {"get": None, "delete": False, "exists": False, "get_many": {}}[op]
        if op in ("get", "get_many"):
            assert stats["misses"] == before["misses"] + 1
        assert stats["hits"] == before["hits"]


def test_eq_deletes_the_compared_node():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    drive(cache.set(K("b"), 2))
    # whichever stored node the probe is compared with first, the hook deletes it

    def delete_other(self, other):
        if not K.hook.fired:
            K.hook.fired.append(True)
            victim = self if self.name != "probe" else other
            drive(cache.delete(K(victim.name)))

    delete_other.fired = []
    K.hook = delete_other
    assert drive(cache.get(K("probe"))) is None
    stats = check(cache)
    assert stats["size"] == 1
    K.hook = None
    assert len(drive(cache.get_many([K("a"), K("b")]))) == 1


def test_eq_deletes_the_target_key():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    drive(cache.set(K("b"), 2))
    K.hook = one_shot(lambda: drive(cache.delete(K("a"))))
    assert drive(cache.get(K("a"))) is None
    stats = check(cache)
    assert stats["size"] == 1
    assert stats["misses"] == 1
    K.hook = None
    assert drive(cache.get(K("b"))) == 2


def test_eq_inserts_many_keys_then_lookup_restarts():
    K = make_key_class()
    cache = InMemoryCache(max_size=10_000)
    drive(cache.set(K("a"), 1))
    drive(cache.set(K("b"), 2))
    K.hook = one_shot(lambda: drive(cache.set_many({("f", i): i for i in range(500)})))
    assert drive(cache.get(K("a"))) == 1  # resized meanwhile: found after a restart
    stats = check(cache)
    assert stats["size"] == 502
    assert stats["hits"] == 1


def test_eq_inserts_the_probe_key_itself():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    K.hook = one_shot(lambda: drive(cache.set(K("c"), 99)))
    drive(cache.set(K("c"), 3))
    stats = check(cache)
    assert stats["size"] == 2
    K.hook = None
    assert drive(cache.get(K("c"))) == 3


def test_eq_evicts_everything_with_small_cache():
    K = make_key_class()
    cache = InMemoryCache(max_size=3)
    drive(cache.set(K("a"), 1))
    drive(cache.set(K("b"), 2))
    K.hook = one_shot(lambda: [drive(cache.set(("f", i), i)) for i in range(10)])
    assert drive(cache.get(K("zz"))) is None
    stats = check(cache)
    assert stats["size"] == 3
    assert stats["evictions"] == 9


def test_eq_that_always_mutates_gives_runtime_error():
    K = make_key_class()
    cache = InMemoryCache(max_size=100_000)
    drive(cache.set(K("a"), 1))
    counter = itertools.count()
    K.hook = lambda self, other: drive(cache.set(("filler", next(counter)), 0))
    before_misses = cache.stats()["misses"]
    with pytest.raises(RuntimeError):
        cache.get(K("b"))
    with pytest.raises(RuntimeError):
        cache.set(K("b"), 1)
    with pytest.raises(RuntimeError):
        cache.delete(K("b"))
    with pytest.raises(RuntimeError):
        cache.exists(K("b"))
    stats = check(cache)
    assert stats["misses"] == before_misses
    K.hook = None
    assert drive(cache.get(K("a"))) == 1
    assert drive(cache.exists(K("b"))) is False


def test_eq_that_toggles_an_entry_forever():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))

    def toggle(self, other):
        drive(cache.delete("x"))
        drive(cache.set("x", 1))

    K.hook = toggle
    with pytest.raises(RuntimeError):
        cache.get(K("b"))
    K.hook = None
    check(cache)


def test_eq_reenters_lookup_of_the_same_key():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    drive(cache.set(K("b"), 2))
    depth = [0]

    def nested(self, other):
        if depth[0] < 5:
            depth[0] += 1
            drive(cache.get(K("b")))
            drive(cache.exists(K("a")))

    K.hook = nested
    assert drive(cache.get(K("b"))) == 2
    K.hook = None
    check(cache)
    assert depth[0] == 5


def test_unbounded_eq_recursion_is_a_recursion_error():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    K.hook = lambda self, other: drive(cache.get(K("x")))
    with pytest.raises(RecursionError):
        cache.get(K("x"))
    K.hook = None
    check(cache)
    assert drive(cache.get(K("a"))) == 1


def test_eq_mutates_the_key_list_of_get_many():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    drive(cache.set("s", 2))
    keys = [K("b"), "s", K("a"), "missing"]
    K.hook = one_shot(lambda: keys.clear())
    result = drive(cache.get_many(keys))  # works on its own copy of the keys
    assert keys == []
    assert {(k.name if isinstance(k, K) else k): v for k, v in result.items()} == {
        "s": 2, "a": 1}
    stats = check(cache)
    assert (stats["hits"], stats["misses"]) == (2, 2)


def test_eq_mutates_the_mapping_of_set_many():
    K = make_key_class()
    cache = InMemoryCache()
    drive(cache.set(K("a"), 1))
    items = {K("b"): 2, "x": 3, "y": 4}
    K.hook = one_shot(lambda: (items.clear(), items.update({"z": 0})))
    drive(cache.set_many(items))  # works on a snapshot of the items
    assert items == {"z": 0}
    K.hook = None
    assert drive(cache.get_many([K("b"), "x", "y", "z"])) == {K("b"): 2, "x": 3, "y": 4}
    check(cache)


# ---------------------------------------------------------------------------- __hash__


class HashBomb:
    fail = False

    def __hash__(self):
        if HashBomb.fail:
            raise Boom
        return 77


@pytest.fixture
def hash_bomb():
    HashBomb.fail = False
    yield HashBomb()
    HashBomb.fail = False


def test_hash_raises_changes_nothing(hash_bomb):
    cache = InMemoryCache(max_size=3)
    for k in "abc":
        drive(cache.set(k, k))
    mapping = {"x": 1, hash_bomb: 2, "y": 3}
    keys = ["a", "b", hash_bomb, "zz"]
    HashBomb.fail = True
    before = cache.stats()
    for call in (
        lambda: cache.get(hash_bomb),
        lambda: cache.set(hash_bomb, 1),
        lambda: cache.delete(hash_bomb),
        lambda: cache.exists(hash_bomb),
        lambda: cache.get_many(keys),
        lambda: cache.set_many(mapping),
    ):
        with pytest.raises(Boom):
            call()
        assert cache.stats() == before
        check(cache)
    # nothing stored, nothing evicted, recency unchanged: d evicts a
    drive(cache.set("d", "d"))
    assert drive(cache.get_many(["a", "b", "c", "d", "x", "y"])) == {"b": "b", "c": "c", "d": "d"}


def test_hash_returning_non_int():
    class BadHash:
        def __hash__(self):
            return "no"

    cache = InMemoryCache()
    with pytest.raises(TypeError):
        cache.set(BadHash(), 1)
    with pytest.raises(TypeError):
        cache.get_many([BadHash()])
    assert cache.stats()["size"] == 0


def test_hash_none_is_unhashable():
    class NoHash:
        __hash__ = None

    cache = InMemoryCache()
    with pytest.raises(TypeError):
        cache.set(NoHash(), 1)
    check(cache)


@pytest.mark.parametrize("op", ["get", "set", "delete", "exists", "get_many", "set_many"])
def test_hash_mutates_the_cache(op):
    cache = InMemoryCache(max_size=5)
    for i in range(5):
        drive(cache.set(i, i))

    class MutatingHash:
        def __hash__(self):
            drive(cache.clear())
            drive(cache.set("during_hash", 1))
            return 5

        def __eq__(self, other):
            return self is other

    k = MutatingHash()
    drive({
        "get": lambda: cache.get(k),
        "set": lambda: cache.set(k, 1),
        "delete": lambda: cache.delete(k),
        "exists": lambda: cache.exists(k),
        "get_many": lambda: cache.get_many(["x", k, 3]),
        "set_many": lambda: cache.set_many(OddItems([("x", 1), (k, 2)])),
    }[op]())
    stats = check(cache)
    assert drive(cache.exists("during_hash")) is True
    assert stats["size"] >= 1


class OddItems:
    def __init__(self, pairs):
        self.pairs = pairs

    def items(self):
        return self.pairs


# ---------------------------------------------------------------------------- collisions


def test_constant_hash_keys():
    K = make_key_class(hash_value=12345)
    n = 400
    cache = InMemoryCache(max_size=n)
    for i in range(n):
        drive(cache.set(K(i), i))
    check(cache)
    for i in range(0, n, 7):
        assert drive(cache.get(K(i))) == i
    for i in range(0, n, 2):
        assert drive(cache.delete(K(i))) is True
    check(cache)
    got = drive(cache.get_many([K(i) for i in range(n)]))
    assert {k.name: v for k, v in got.items()} == {i: i for i in range(1, n, 2)}
    # colliding keys of other types
    drive(cache.set(12345, "int"))
    drive(cache.set(12345.0, "float"))  # same key as the int
    assert drive(cache.get(12345)) == "float"
    # overflow: evict the colliding keys in LRU order
    for i in range(n):
        drive(cache.set(("new", i), i))
    stats = check(cache)
    assert stats["size"] == n
    assert drive(cache.get_many([K(i) for i in range(n)])) == {}


def test_colliding_keys_with_some_expired():
    K = make_key_class(hash_value=3)
    cache = InMemoryCache()
    for i in range(50):
        drive(cache.set(K(i), i, ttl=0 if i % 2 else None))
    got = drive(cache.get_many([K(i) for i in range(50)]))
    assert sorted(k.name for k in got) == list(range(0, 50, 2))
    stats = check(cache)
    assert (stats["size"], stats["expirations"]) == (25, 25)


def test_hash_minus_one():
    class Minus1:
        def __hash__(self):
            return -1  # Python turns this into -2

        def __eq__(self, other):
            return isinstance(other, Minus1)

    cache = InMemoryCache()
    drive(cache.set(-1, "a"))
    drive(cache.set(-2, "b"))
    drive(cache.set(Minus1(), "c"))
    assert hash(-1) == hash(-2) == hash(Minus1())
    assert drive(cache.get_many([-1, -2, Minus1()])) == {-1: "a", -2: "b", Minus1(): "c"}
    check(cache)


# ---------------------------------------------------------------------------- equal across types


def test_one_one_float_true_are_the_same_key():
    cache = InMemoryCache()
    drive(cache.set(1, "int"))
    assert drive(cache.get(1.0)) == "int"
    assert drive(cache.get(True)) == "int"
    drive(cache.set(True, "bool"))
    drive(cache.set(1.0, "float"))
    assert cache.stats()["size"] == 1
    assert drive(cache.get(1)) == "float"
    assert drive(cache.get(complex(1, 0))) == "float"
    assert drive(cache.delete(True)) is True
    assert cache.stats()["size"] == 0
    for zero in (0, 0.0, -0.0, False, decimal.Decimal(0), fractions.Fraction(0)):
        drive(cache.set(zero, repr(zero)))
    assert cache.stats()["size"] == 1
    check(cache)


def test_nan_keys_follow_dict_identity_rules():
    cache = InMemoryCache()
    nan = float("nan")
    drive(cache.set(nan, "same object"))
    assert drive(cache.get(nan)) == "same object"
    assert drive(cache.get(float("nan"))) is None
    drive(cache.set(float("nan"), "other"))
    assert cache.stats()["size"] == 2
    check(cache)


def test_lookups_agree_with_dict():
    class StrNeverEqual(str):
        def __eq__(self, other):
            return False

        __hash__ = str.__hash__

    class StrAlwaysEqual(str):
        def __eq__(self, other):
            return True

        __hash__ = str.__hash__

    K = make_key_class(hash_value=hash(1))
    pool = [
        1, 1.0, True, 0, False, 2, "1", b"1", (1,), (1.0,), frozenset([1]),
        decimal.Decimal(1), fractions.Fraction(1, 1), complex(1, 0), "a",
        # (an always-equal key sharing a hash with two stored keys would match either:
        # only one is used, with a hash nothing else has)
        StrNeverEqual("a"), StrAlwaysEqual("b"), K("x"), K("y"),
        None, (), "", 2.5, decimal.Decimal("2.5"),
    ]
    rng = random.Random(1234)
    cache = InMemoryCache(max_size=10_000, default_ttl=None)
    model = {}
    for step in range(3000):
        key = rng.choice(pool)
        action = rng.random()
        if action < 0.4:
            drive(cache.set(key, step))
            model[key] = step
        elif action < 0.8:
            assert drive(cache.get(key)) == model.get(key), (step, key)
        elif action < 0.9:
            assert drive(cache.delete(key)) == (model.pop(key, None) is not None), (step, key)
        else:
            assert drive(cache.exists(key)) == (key in model), (step, key)
        assert cache.stats()["size"] == len(model)
    check(cache)


def test_str_subclass_eq_is_called():
    calls = []

    class S(str):
        def __eq__(self, other):
            calls.append(other)
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    cache = InMemoryCache()
    drive(cache.set("abc", 1))
    assert drive(cache.get(S("abc"))) == 1
    assert calls == ["abc"]
    drive(cache.set(S("xyz"), 2))
    calls.clear()
    assert drive(cache.get("xyz")) == 2
    assert calls == ["xyz"]


# ---------------------------------------------------------------------------- __del__ re-enters


class Reenter:
    """A value (or key) whose __del__ runs an action, recording that it ran."""

    def __init__(self, action, log, tag=None):
        self.action = action
        self.log = log
        self.tag = tag

    def __del__(self):
        self.log.append(self.tag)
        self.action()


def test_del_on_eviction_sets():
    cache = InMemoryCache(max_size=3)
    log = []
    drive(cache.set("a", Reenter(lambda: drive(cache.set("from_del", 1)), log, "a")))
    for k in "bcd":
        drive(cache.set(k, k))  # d evicts a; a.__del__ inserts, evicting b
    assert log == ["a"]
    stats = check(cache)
    assert stats["size"] == 3
    assert stats["evictions"] == 2
    assert drive(cache.get_many(list("abcd") + ["from_del"])) == {
        "c": "c", "d": "d", "from_del": 1}


def test_del_on_eviction_chain_reaction():
    cache = InMemoryCache(max_size=5)
    log = []
    counter = itertools.count()

    def spawn():
        i = next(counter)
        if i < 100:
            drive(cache.set(("spawn", i), Reenter(spawn, log, i)))

    for i in range(5):
        drive(cache.set(("seed", i), Reenter(spawn, log, ("seed", i))))
    drive(cache.set("trigger", 0))
    stats = check(cache)
    assert stats["size"] <= 5
    assert len(log) >= 1
    drive(cache.clear())  # frees the rest, which spawn again into the empty table
    check(cache)
    drive(cache.set_many({("x", i): i for i in range(20)}))
    check(cache)
    assert cache.stats()["size"] == 5


def test_del_on_eviction_changes_max_size():
    cache = InMemoryCache(max_size=4)
    log = []

    def shrink():
        cache.max_size = 1

    drive(cache.set("a", Reenter(shrink, log)))
    for k in "bcde":
        drive(cache.set(k, k))  # e evicts a, whose __del__ lowers max_size
    check(cache)
    assert log == [None]
    assert cache.max_size == 1
    # as in the reference, whose eviction loop re-reads max_size after each deletion,
    # the same set() already evicted down to the new limit
    assert cache.stats()["size"] == 1 and cache.stats()["evictions"] == 4
    drive(cache.set("f", "f"))
    stats = check(cache)
    assert stats["size"] == 1
    assert stats["evictions"] == 5  # as in the reference: a, b, c, d, e
    assert drive(cache.get_many(list("abcdef"))) == {"f": "f"}


def test_del_on_overwrite_clears():
    cache = InMemoryCache()
    log = []
    drive(cache.set("other", 1))
    drive(cache.set("k", Reenter(lambda: drive(cache.clear()), log)))
    drive(cache.set("k", 2))
    assert log == [None]
    stats = check(cache)
    assert stats["size"] == 0  # the old value's __del__ ran after the overwrite


def test_del_on_overwrite_sets_same_key():
    cache = InMemoryCache()
    log = []
    drive(cache.set("k", Reenter(lambda: drive(cache.set("k", 3)), log)))
    drive(cache.set("k", 2))
    assert log == [None]
    check(cache)
    assert drive(cache.get("k")) == 3
    assert cache.stats()["size"] == 1


def test_del_on_set_many_overwrite_clears():
    cache = InMemoryCache()
    log = []
    drive(cache.set("a", Reenter(lambda: drive(cache.clear()), log)))
    drive(cache.set("z", 0))
    drive(cache.set_many({"a": 1, "b": 2, "c": 3}))
    assert log == [None]
    check(cache)
    assert drive(cache.get_many(["a", "b", "c", "z"])) == {"b": 2, "c": 3}


def test_del_on_delete_sets_same_key():
    cache = InMemoryCache()
    log = []
    drive(cache.set("k", Reenter(lambda: drive(cache.set("k", "again")), log)))
    assert drive(cache.delete("k")) is True
    assert log == [None]
    check(cache)
    assert drive(cache.get("k")) == "again"


def test_del_on_delete_deletes_others():
    cache = InMemoryCache()
    log = []
    for i in range(10):
        drive(cache.set(i, i))
    drive(cache.set("k", Reenter(lambda: [drive(cache.delete(i)) for i in range(10)], log)))
    assert drive(cache.delete("k")) is True
    stats = check(cache)
    assert stats["size"] == 0


def test_del_on_clear_reinserts_and_clears_again():
    cache = InMemoryCache(max_size=50)
    log = []
    for i in range(20):
        drive(cache.set(i, Reenter(lambda i=i: drive(cache.set(("re", i), i)), log, i)))
    drive(cache.set("nested", Reenter(lambda: drive(cache.clear()), log, "nested")))
    drive(cache.clear())
    assert sorted(log, key=str) == sorted(list(range(20)) + ["nested"], key=str)
    stats = check(cache)
    # the values re-inserted after the nested clear survive; none of the originals do
    assert drive(cache.get_many(range(20))) == {}
    assert stats["size"] == len(drive(cache.get_many([("re", i) for i in range(20)])))


def test_del_on_expiry_via_get():
    cache = InMemoryCache()
    log = []
    drive(cache.set("k", Reenter(lambda: drive(cache.set("k", "fresh")), log), ttl=0))
    assert drive(cache.get("k")) is None
    assert log == [None]
    stats = check(cache)
    assert (stats["misses"], stats["expirations"]) == (1, 1)
    assert drive(cache.get("k")) == "fresh"


def test_del_on_expiry_via_exists():
    cache = InMemoryCache()
    log = []
    drive(cache.set("k", Reenter(lambda: drive(cache.clear()), log), ttl=0))
    drive(cache.set("other", 1))
    assert drive(cache.exists("k")) is False
    assert log == [None]
    assert check(cache)["size"] == 0


def test_del_on_expiry_during_get_many():
    cache = InMemoryCache()
    log = []
    drive(cache.set("later", "L"))
    drive(cache.set("k", Reenter(lambda: drive(cache.delete("later")), log), ttl=0))
    drive(cache.set("after", "A"))
    result = drive(cache.get_many(["k", "later", "after", "k"]))
    assert log == [None]
    assert result == {"after": "A"}
    stats = check(cache)
    assert (stats["hits"], stats["misses"], stats["expirations"]) == (1, 3, 1)


def test_del_of_key_reenters():
    cache = InMemoryCache(max_size=2)
    log = []

    class ReKey:
        def __init__(self, action):
            self.action = action

        def __hash__(self):
            return 99

        def __eq__(self, other):
            return self is other

        def __del__(self):
            log.append("key")
            self.action()

    drive(cache.set(ReKey(lambda: drive(cache.set("from_key_del", 1))), "v"))
    drive(cache.set("b", 1))
    drive(cache.set("c", 1))  # evicts the ReKey entry
    assert log == ["key"]
    check(cache)
    drive(cache.set(ReKey(lambda: drive(cache.clear())), "v"))
    drive(cache.clear())
    assert log == ["key", "key"]
    assert check(cache)["size"] == 0


async def test_del_on_sweep():
    cache = InMemoryCache(cleanup_interval=0.05)
    log = []
    await cache.start()
    try:
        for i in range(10):
            await cache.set(("s", i), Reenter(lambda i=i: drive(cache.set(("re", i), i)), log, i),
                            ttl=0.01)
        await cache.set("clearer", Reenter(lambda: drive(cache.set("after_clear", 1)), log,
                                           "c"), ttl=0.01)
        await cache.set("keep", 1)
        await asyncio.sleep(0.3)
        stats = check(cache)
        assert len(log) == 11
        assert stats["expirations"] == 11
        assert await cache.get("keep") == 1
        assert await cache.get_many([("re", i) for i in range(10)]) == {
            ("re", i): i for i in range(10)}
    finally:
        await cache.stop()


async def test_del_on_sweep_clears_and_stops():
    cache = InMemoryCache(cleanup_interval=0.05)
    log = []

    def action():
        drive(cache.clear())
        drive(cache.stop())

    await cache.start()
    await cache.set("x", Reenter(action, log), ttl=0.01)
    await cache.set("y", 1)
    await asyncio.sleep(0.3)
    assert log == [None]
    assert cache.running is False
    assert check(cache)["size"] == 0
    await cache.stop()


def test_del_when_cache_is_dropped_weakref():
    log = []
    cache = InMemoryCache()
    ref = weakref.ref(cache)

    def action():
        c = ref()
        log.append(c)
        if c is not None:
            drive(c.set("x", 1))

    for i in range(5):
        drive(cache.set(i, Reenter(action, [])))
    del cache
    gc.collect()
    assert ref() is None
    assert log == [None] * 5


def test_del_when_cache_in_cycle_is_collected():
    log = []

    class Holder:
        def __init__(self, cache):
            self.cache = cache

        def __del__(self):
            log.append(1)
            drive(self.cache.set(("from_del", len(log)), 1))
            drive(self.cache.get("x"))

    cache = InMemoryCache()
    for i in range(5):
        drive(cache.set(i, Holder(cache)))
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    gc.collect()
    assert ref() is None
    assert len(log) == 5
