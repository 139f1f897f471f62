"""The conftest.py next to bruno-memory's own tests/unit/test_cache.py when
dropin/test_reference_suite.py runs it (copied there): install() first, and every test
checks that bruno-memory hands out our classes."""
import pytest

import bruno_memory_c

bruno_memory_c.install()


@pytest.fixture(autouse=True)
def _ours_installed():
    from bruno_memory.utils import cache

    for name in ("InMemoryCache", "RedisCache", "MultiLevelCache"):
        assert getattr(cache, name) is getattr(bruno_memory_c, name), name
