"""Load the reference implementation, bruno_memory.utils.cache (bruno-memory 0.1.5).

The installed package's ``__init__`` imports the whole bruno stack (backends, configs,
...), whose dependencies are not installed here. So we never run it: we register stub
package modules ``bruno_memory`` and ``bruno_memory.utils`` (with ``__path__`` pointing at
the real directories, so their submodules import normally), then load
``bruno_memory.exceptions`` and ``bruno_memory.utils.cache`` from their files.

Idempotent and non-destructive: whatever is already in ``sys.modules`` (the real package,
or stubs registered by an earlier call or another test module) is kept as it is.

``load_reference()`` returns the cache module as registered in ``sys.modules``; an
``install()`` of bruno_memory_c may later patch its names. ``reference_classes()``
returns the reference's own classes as first loaded, whatever has been patched since:
the differential tests and the benchmark use that.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

DIST_NAME = "bruno-memory"
PKG = "bruno_memory"
_CACHE_REL = os.path.join(PKG, "utils", "cache.py")
_CLASS_NAMES = ("CacheInterface", "InMemoryCache", "RedisCache", "MultiLevelCache")

_module: types.ModuleType | None = None
_classes: dict[str, type] | None = None


class ReferenceNotInstalled(ImportError):
    pass


def package_dir() -> str:
    """The directory of the installed bruno_memory package (holding utils/cache.py)."""
    for entry in sys.path:
        if not isinstance(entry, str) or not entry:
            continue
        if os.path.isfile(os.path.join(entry, _CACHE_REL)):
            return os.path.join(entry, PKG)
    try:
        import importlib.metadata as md

        dist = md.distribution(DIST_NAME)
        located = os.fspath(dist.locate_file(PKG))
        if os.path.isfile(os.path.join(located, "utils", "cache.py")):
            return located
    except Exception:  # PackageNotFoundError, or an odd distribution layout
        pass
    raise ReferenceNotInstalled(
        "the reference bruno-memory==0.1.5 is not installed (bruno_memory/utils/cache.py "
        "not found on sys.path); install it with `make venv` or "
        "`.venv/bin/python -m pip install --no-deps bruno-memory==0.1.5`"
    )


def _reference_version() -> str | None:
    try:
        import importlib.metadata as md

        return md.version(DIST_NAME)
    except Exception:
        return None


def _ensure_stub_package(name: str, path: str) -> types.ModuleType:
    """sys.modules[name] if present (real or stub), else a new stub package."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    mod = types.ModuleType(name)
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [path]
    mod.__spec__ = spec
    mod.__path__ = [path]
    mod.__file__ = os.path.join(path, "__init__.py")
    mod.__package__ = name
    mod.__bruno_reference_stub__ = True  # marks it as ours, not the real __init__
    if name == PKG:
        version = _reference_version()
        if version is not None:
            mod.__version__ = version
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules and not hasattr(sys.modules[parent], child):
        setattr(sys.modules[parent], child, mod)
    return mod


def _load_file(name: str, filename: str, register: bool = True) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, filename)
    if spec is None or spec.loader is None:
        raise ReferenceNotInstalled(f"cannot load {name} from {filename}")
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        if register and sys.modules.get(name) is mod:
            del sys.modules[name]
        raise
    if register:
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, mod)
    return mod


def load_reference() -> types.ModuleType:
    """The reference's cache module (loaded once; later calls return the same module)."""
    global _module, _classes
    if _module is not None:
        return _module
    pkg_dir = package_dir()
    _ensure_stub_package(PKG, pkg_dir)
    _ensure_stub_package(PKG + ".utils", os.path.join(pkg_dir, "utils"))
    if PKG + ".exceptions" not in sys.modules:
        _load_file(PKG + ".exceptions", os.path.join(pkg_dir, "exceptions.py"))
    cache_file = os.path.join(pkg_dir, "utils", "cache.py")
    mod = sys.modules.get(PKG + ".utils.cache")
    if mod is None:
        mod = _load_file(PKG + ".utils.cache", cache_file)
    # The reference's own classes. If something (bruno_memory_c.install()) already
    # replaced them in the registered module, take them from a private copy.
    classes = {n: getattr(mod, n, None) for n in _CLASS_NAMES}
    if not all(_defined_in_python(c) for c in classes.values()):
        private = _load_file("_bruno_memory_reference_cache", cache_file, register=False)
        classes = {n: getattr(private, n) for n in _CLASS_NAMES}
    _classes = classes
    _module = mod
    return mod


def _defined_in_python(cls: object) -> bool:
    return (
        isinstance(cls, type)
        and cls.__module__ in ("bruno_memory.utils.cache", "_bruno_memory_reference_cache")
    )


def reference_classes() -> dict[str, type]:
    """{"CacheInterface", "InMemoryCache", "RedisCache", "MultiLevelCache"}: the
    reference's own classes, as first loaded."""
    load_reference()
    assert _classes is not None
    return dict(_classes)


def reference_inmemory_cache() -> type:
    """The reference's InMemoryCache class."""
    return reference_classes()["InMemoryCache"]
