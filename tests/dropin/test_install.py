"""install(): bruno-memory hands out our classes (README "Use it under bruno-memory").

The README section is "Use it under bruno-memory: `install()`"; ARCHITECTURE "install()
(`_install.py`)". Each scenario runs in a fresh interpreter (install() changes modules
for good). Here bruno-memory 0.1.5 is installed --no-deps, so its package __init__
(which needs the whole bruno stack) cannot run; install() then loads only its cache
modules.
"""
from __future__ import annotations

from tests.support import REPO, run_python


def test_install_hands_out_our_classes():
    proc = run_python("""
        import sys
        import bruno_memory_c
        bruno_memory_c.install()
        bruno_memory_c.install()  # idempotent

        # (bruno-memory's package itself cannot import here: its dependencies are
        # missing, see test_a_later_import_of_bruno_memory_is_not_fooled_by_install)
        from bruno_memory.utils import cache
        utils = sys.modules["bruno_memory.utils"]
        for name in ("InMemoryCache", "RedisCache", "MultiLevelCache"):
            assert getattr(cache, name) is getattr(bruno_memory_c, name), name
            assert getattr(utils, name) is getattr(bruno_memory_c, name), name
        assert cache.REDIS_AVAILABLE is True
        for obj in (bruno_memory_c.InMemoryCache(), bruno_memory_c.RedisCache(),
                    bruno_memory_c.MultiLevelCache(bruno_memory_c.InMemoryCache())):
            assert isinstance(obj, cache.CacheInterface), obj
            assert isinstance(obj, utils.CacheInterface), obj
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_code_written_for_bruno_memory_runs_unchanged():
    proc = run_python("""
        import asyncio
        import bruno_memory_c
        from bruno_memory_c.testing import refused_port
        bruno_memory_c.install()

        from bruno_memory.exceptions import CacheError
        from bruno_memory.utils import InMemoryCache, MultiLevelCache, RedisCache

        async def main():
            cache = MultiLevelCache(InMemoryCache(max_size=10), None)
            await cache.start()
            await cache.set("k", {"v": 1}, ttl=60)
            assert await cache.get("k") == {"v": 1}
            assert (await cache.get_stats())["l1"]["hits"] == 1
            await cache.stop()
            with refused_port() as port:          # nothing listens there
                bad = RedisCache(port=port, connect_timeout=0.5)
                try:
                    await bad.connect()
                except CacheError as e:           # bruno-memory's class catches ours
                    assert str(e).startswith("Redis connection failed: "), str(e)
                    assert isinstance(e, bruno_memory_c.CacheError)
                else:
                    raise AssertionError("connect() did not raise")
                # a data method connects first, as the reference's does, and raises
                # that failure: caught as bruno-memory's CacheError too
                try:
                    await bad.set("k", 1)
                except CacheError as e:
                    assert str(e).startswith("Redis connection failed: "), str(e)
                    assert type(e) is bruno_memory_c._core._get_cache_error()
                else:
                    raise AssertionError("set() did not raise")
            print("ok")

        asyncio.run(main())
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_install_replaces_names_other_bruno_modules_imported():
    proc = run_python("""
        import sys, types
        import bruno_memory_c
        from bruno_memory_c._install import _import_bruno_cache

        cache, _, _ = _import_bruno_cache()
        reference = cache.InMemoryCache
        # A bruno-memory module that did `from bruno_memory.utils.cache import ...`
        user = types.ModuleType("bruno_memory.managers_like")
        user.InMemoryCache = reference
        user.other = object()
        sys.modules[user.__name__] = user

        bruno_memory_c.install()
        assert user.InMemoryCache is bruno_memory_c.InMemoryCache
        assert reference is not bruno_memory_c.InMemoryCache
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr


def test_install_without_bruno_memory_is_a_one_line_import_error():
    # -I -S: no site-packages at all, so bruno-memory is really absent; the package is
    # imported from the repository (its extension is built in place).
    proc = run_python(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        import bruno_memory_c
        try:
            bruno_memory_c.install()
        except ImportError as e:
            msg = str(e)
            assert "\\n" not in msg and "bruno-memory" in msg, msg
            print("ImportError:", msg)
        else:
            raise AssertionError("install() did not raise")
        # Our own classes work regardless.
        assert bruno_memory_c.InMemoryCache().stats()["size"] == 0
    """, "-I", "-S")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ImportError: ")
    assert "pip install bruno-memory" in proc.stdout


def test_install_with_bruno_memory_hidden_raises_import_error():
    proc = run_python("""
        import sys
        sys.modules["bruno_memory"] = None   # as if not installed
        import bruno_memory_c
        try:
            bruno_memory_c.install()
        except ImportError as e:
            print(type(e).__name__)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ImportError"


def test_our_errors_pickle_after_install():
    proc = run_python("""
        import asyncio, pickle
        import bruno_memory_c
        bruno_memory_c.install()
        from bruno_memory.exceptions import CacheError

        async def main():
            try:
                await bruno_memory_c.RedisCache(port=1, connect_timeout=0.5).connect()
            except CacheError as e:
                return e

        error = asyncio.run(main())
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and again.args == error.args
        assert isinstance(again, CacheError) and isinstance(again, bruno_memory_c.CacheError)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_install_over_an_importable_bruno_memory(tmp_path):
    """The normal path: a bruno-memory whose package __init__ imports fine (here a
    stand-in package of the same shape, first on sys.path)."""
    pkg = tmp_path / "bruno_memory"
    (pkg / "utils").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .utils import cache as _cache\nLOADED = True\n")
    (pkg / "exceptions.py").write_text(
        "class MemoryError(Exception):\n    pass\n\n"
        "class CacheError(MemoryError):\n    pass\n")
    (pkg / "utils" / "__init__.py").write_text(
        "from bruno_memory.utils.cache import CacheInterface, InMemoryCache, "
        "MultiLevelCache, RedisCache\n")
    (pkg / "utils" / "cache.py").write_text(
        "import abc\nfrom bruno_memory.exceptions import CacheError\n"
        "REDIS_AVAILABLE = False\n"
        "class CacheInterface(abc.ABC):\n    pass\n"
        "class InMemoryCache(CacheInterface):\n    pass\n"
        "class RedisCache(CacheInterface):\n    pass\n"
        "class MultiLevelCache(CacheInterface):\n    pass\n")
    proc = run_python(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import bruno_memory
        assert bruno_memory.LOADED and bruno_memory.__file__.startswith({str(tmp_path)!r})
        import bruno_memory_c
        bruno_memory_c.install()
        from bruno_memory.utils import InMemoryCache
        from bruno_memory.utils.cache import REDIS_AVAILABLE, CacheInterface
        from bruno_memory.exceptions import CacheError
        assert InMemoryCache is bruno_memory_c.InMemoryCache and REDIS_AVAILABLE
        assert isinstance(InMemoryCache(), CacheInterface)
        assert issubclass(bruno_memory_c._core._get_cache_error(), CacheError)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_combined_class_and_its_subclasses_pickle_as_themselves():
    """The CacheError class install() makes is named bruno_memory_c.CacheError but is
    not that object: it pickles as "the class the caches raise in the receiving
    process" (its instances already did); a user's subclass of it, and its instances,
    pickle as themselves, not as the combined class. (Before: pickling the class
    failed, and a subclass's instances came back as the combined class.)"""
    proc = run_python("""
        import pickle
        import bruno_memory_c
        bruno_memory_c.install()
        combined = bruno_memory_c._core._get_cache_error()
        assert combined is not bruno_memory_c.CacheError
        assert pickle.loads(pickle.dumps(combined)) is combined

        import __main__
        class MyError(combined):
            pass
        __main__.MyError = MyError
        assert pickle.loads(pickle.dumps(MyError)) is MyError
        again = pickle.loads(pickle.dumps(MyError("boom", 1)))
        assert type(again) is MyError and again.args == ("boom", 1)
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_later_import_of_bruno_memory_is_not_fooled_by_install():
    """bruno-memory installed without its dependencies: install() loads its cache
    modules only, and leaves no stand-in package behind — a later `import
    bruno_memory` raises the real ImportError (its missing dependency), while the cache
    modules stay importable. (Before: a stub package made `import bruno_memory`
    succeed silently, without create_backend.)"""
    proc = run_python("""
        import bruno_memory_c
        bruno_memory_c.install()
        from bruno_memory.utils.cache import InMemoryCache
        assert InMemoryCache is bruno_memory_c.InMemoryCache
        try:
            import bruno_memory
        except ImportError as e:
            print("ImportError", type(e).__name__)
        else:
            raise AssertionError(f"import bruno_memory succeeded: {bruno_memory!r}")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ImportError"), proc.stdout
