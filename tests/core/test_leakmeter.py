"""Core: the leak tests' memory meters see allocations in this build (ARCHITECTURE "Builds").

inmemory/test_leaks.py, redis/test_redis_faults.py and multilevel/test_multilevel_leaks.py
measure memory with tests/support/leakmeter.py, in the normal build and under ASan
(`make test-asan`); this checks that neither meter is blind where it runs.
"""
from bruno_memory_c import InMemoryCache
from tests.support import drive
from tests.support.leakmeter import (
    NATIVE_METER, Growth, native_heap_bytes, raw_free, raw_malloc,
)


def test_the_memory_meters_see_allocations():
    """The leak tests' meters are not blind in this build: each sees allocations of a
    known size, and sees them given back. (Under ASan, sys.getallocatedblocks() and
    glibc's mallinfo2() see nothing at all; see tests/support/leakmeter.py.)"""
    size = 4 * 1024 * 1024
    before = native_heap_bytes()
    pointers = [raw_malloc(size // 64) for _ in range(64)]
    held = native_heap_bytes() - before
    for pointer in pointers:
        raw_free(pointer)
    after = native_heap_bytes() - before
    assert size <= held < size + 512 * 1024, (held, NATIVE_METER)
    assert abs(after) < 512 * 1024, (after, NATIVE_METER)

    # tracemalloc sees the LRU table's PyMem nodes (and, in this build, whichever
    # allocator serves them).
    cache = InMemoryCache(max_size=100_000)
    keys = [f"meter-{i}" for i in range(20_000)]
    with Growth() as growth:
        drive(cache.set_many(dict.fromkeys(keys, 1)))
    assert growth.traced > 20_000 * 32, growth
    drive(cache.clear())
    del cache
    # And a leak of the kind the tests look for, 16 bytes per round, shows.
    with Growth() as growth:
        leaked = [raw_malloc(16) for _ in range(50_000)]
    try:
        assert growth.native >= 50_000 * 16, growth
    finally:
        for pointer in leaked:
            raw_free(pointer)
