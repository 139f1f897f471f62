"""The wall clock jumps an hour ahead, then an hour back, under the caches
(dropin/test_readme_claims.py; README "Differences from bruno-memory", 2: "Expiry uses a
monotonic clock, so a wall-clock change neither expires nor resurrects entries").

    LD_PRELOAD=walljump.so python -m tests.scripts.wall_clock_jump asyncio|uvloop PORT SHIM

SHIM is the compiled tests/scripts/walljump.c (preloaded: the jumps are its
walljump_set_offset()); PORT a redis-server's, for a MultiLevelCache's L2. Ours, the
reference's InMemoryCache and a MultiLevelCache's L1 see the same jumps; prints one
JSON line of what each answered, which the test asserts on.
"""
import asyncio
import ctypes
import json
import sys
import time

from bruno_memory_c import InMemoryCache, MultiLevelCache, RedisCache
from tests.support.reference import reference_inmemory_cache

loop_name, port, shim = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jump = ctypes.CDLL(shim).walljump_set_offset
jump.argtypes = [ctypes.c_double]
jump.restype = None
Reference = reference_inmemory_cache()


def caches():
    return {"ours": InMemoryCache(), "reference": Reference(),
            "multilevel_l1": MultiLevelCache(InMemoryCache(), None)}


async def expirations(c):
    if isinstance(c, MultiLevelCache):
        return c.l1.stats()["expirations"]
    return (await c.get_stats())["expirations"]


async def main():
    out = {}
    l1 = InMemoryCache()
    l2 = RedisCache(host="127.0.0.1", port=port, prefix="clock:")
    promoted = MultiLevelCache(l1, l2, coherent=False)  # (its L1 clock, not Redis expiry)
    await l2.connect()

    # 1. The wall clock jumps an hour ahead: entries with a minute left stay.
    ahead = caches()
    swept = {"ours": InMemoryCache(cleanup_interval=0.05),
             "reference": Reference(cleanup_interval=0.05)}
    for c in swept.values():
        await c.start()
    for c in [*ahead.values(), *swept.values()]:
        await c.set("live", "v", ttl=60)
        await c.set("live_exists", "v", ttl=60)
    await l2.set("promoted", "p", ttl=60)
    assert await promoted.get("promoted") == "p"      # an L2 hit, promoted into L1
    wall, mono = time.time(), time.monotonic()
    jump(3600.0)
    out["wall_step"] = time.time() - wall
    out["monotonic_step"] = time.monotonic() - mono
    out["ahead"] = {name: await c.get("live") for name, c in ahead.items()}
    out["ahead_exists"] = {name: await c.exists("live_exists") for name, c in ahead.items()}
    before = promoted.stats()
    out["ahead"]["promoted"] = await promoted.get("promoted")
    after = promoted.stats()
    out["ahead_promoted_from"] = {n: after[n] - before[n] for n in ("l1_hits", "l2_hits", "misses")}
    out["ahead_expirations"] = {name: await expirations(c) for name, c in ahead.items()}
    await asyncio.sleep(0.3)                                        # sweeps run meanwhile
    out["swept"] = {name: [(await c.get_stats())["size"], await expirations(c)]
                    for name, c in swept.items()}
    for c in swept.values():
        await c.stop()
    jump(0.0)

    # 2. Entries whose ttl has passed; then the wall clock jumps an hour back.
    back = caches()
    for c in back.values():
        await c.set("gone", "v", ttl=1.0)
    await l2.set("short", "s", ttl=1.0)
    await l1.delete("short")
    assert await promoted.get("short") == "s"          # promoted, for what PTTL leaves
    await asyncio.sleep(1.5)
    wall = time.time()
    jump(-3600.0)
    out["back_wall_step"] = time.time() - wall
    out["back"] = {name: await c.get("gone") for name, c in back.items()}
    out["back"]["promoted_l1"] = await l1.get("short")
    out["back_expirations"] = {name: await expirations(c) for name, c in back.items()}
    out["back_expirations"]["promoted_l1"] = l1.stats()["expirations"]
    jump(0.0)
    await l2.disconnect()
    print(json.dumps(out))


if loop_name == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
