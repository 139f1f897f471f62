"""The installed package works (packaging/test_packaging.py): run by a fresh venv's
python, from outside the repository, with that venv's site-packages directory as the
argument; prints "ok <version>".

    VENV/bin/python tests/scripts/smoke_installed.py SITE_PACKAGES

It imports nothing of the repository: the package must be the venv's (a file under
SITE_PACKAGES), and bruno-memory must be absent there (install() says so).
"""
import asyncio
import sys

import bruno_memory_c
from bruno_memory_c.utils.cache import CacheInterface, InMemoryCache, MultiLevelCache

assert bruno_memory_c.__file__.startswith(sys.argv[1]), bruno_memory_c.__file__

async def main():
    cache = InMemoryCache(max_size=2)
    await cache.set("a", 1)
    assert await cache.get("a") == 1
    assert isinstance(cache, CacheInterface)
    multi = MultiLevelCache(InMemoryCache(), None)   # and its generic path's module
    await multi.set("m", 2)
    assert await multi.get("m") == 2 and multi.stats()["l1_hits"] == 1
    class L2:  # any other L2: the generic path (bruno_memory_c/_multilevel.py)
        async def get(self, key):
            return None
    assert await MultiLevelCache(InMemoryCache(), L2()).get("x") is None
    return cache.stats()["hits"]
assert asyncio.run(main()) == 1
try:  # no bruno-memory in this venv
    bruno_memory_c.install()
except ImportError as e:
    assert "bruno-memory" in str(e)
else:
    raise AssertionError("install() without bruno-memory")
print("ok", bruno_memory_c.__version__)
