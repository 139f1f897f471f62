"""install(): make an installed bruno-memory hand out these classes."""
from __future__ import annotations

import copyreg
import importlib
import importlib.util
import sys
import types
from typing import Any

_NAMES = ("InMemoryCache", "RedisCache", "MultiLevelCache")


def _import_bruno_cache() -> tuple[Any, Any, Any]:
    """bruno_memory.utils.cache, bruno_memory.utils and bruno_memory.exceptions.

    Normally a plain import. bruno-memory's package ``__init__`` imports its whole
    stack (bruno-core, the storage backends); when those are missing, only the three
    modules the caches live in are loaded, under a package object that does not run
    that ``__init__`` (the rest of bruno-memory cannot work without its dependencies).
    """
    if importlib.util.find_spec("bruno_memory") is None:
        raise ImportError(
            "bruno_memory_c.install() needs bruno-memory (pip install bruno-memory); "
            "without it, import the caches from bruno_memory_c directly"
        )
    stub = None
    try:
        importlib.import_module("bruno_memory")
    except ImportError:
        spec = None if "bruno_memory" in sys.modules else importlib.util.find_spec("bruno_memory")
        if spec is not None:  # not in sys.modules (and found at the top)
            stub = types.ModuleType("bruno_memory", "bruno-memory (caches only)")
            stub.__path__ = list(spec.submodule_search_locations or [])
            stub.__spec__ = spec
            stub.__file__ = spec.origin
            stub.__package__ = "bruno_memory"
            sys.modules["bruno_memory"] = stub
    try:
        cache = importlib.import_module("bruno_memory.utils.cache")
        utils = importlib.import_module("bruno_memory.utils")
        exceptions = importlib.import_module("bruno_memory.exceptions")
    finally:
        if stub is not None and sys.modules.get("bruno_memory") is stub:
            # The stub served to load the three modules only: a later
            # `import bruno_memory` runs the real __init__ (and raises its real
            # ImportError), while `from bruno_memory.utils.cache import ...` still
            # finds the loaded modules.
            del sys.modules["bruno_memory"]
    return cache, utils, exceptions


def _raised_class() -> type:
    """The CacheError class the caches raise in this process (see _CombinedMeta)."""
    from bruno_memory_c import _core

    return _core._get_cache_error()


class _CombinedMeta(type):
    """Metaclass of the combined CacheError made by install(): the class pickles as
    "the class the caches raise in the receiving process" (it has no importable name:
    it exists only where install() ran). See _reduce_combined."""


def _reduce_combined(cls: type) -> Any:
    if "_bruno_combined" in cls.__dict__:
        return (_raised_class, ())
    return cls.__qualname__  # a user's subclass: by its own name, as any class


# (pickle saves a class by name whatever its metaclass, unless the copyreg table says
# otherwise for that metaclass)
copyreg.pickle(_CombinedMeta, _reduce_combined)


def _rebuild_cache_error(args: tuple[Any, ...], state: dict[str, Any] | None) -> BaseException:
    """Unpickle a CacheError as the class the caches raise in this process."""
    from bruno_memory_c import _core

    error = _core._get_cache_error()(*args)
    if state:
        error.__dict__.update(state)
    return error


def _reduce_cache_error(self: BaseException) -> Any:
    if "_bruno_combined" not in type(self).__dict__:
        return BaseException.__reduce__(self)  # a user's subclass: as any exception
    return (_rebuild_cache_error, (self.args, self.__dict__ or None))


def install() -> None:
    """Make bruno-memory use the C caches of bruno_memory_c.

    Afterwards ``bruno_memory.utils.cache`` and ``bruno_memory.utils`` hand out
    ``InMemoryCache``, ``RedisCache`` and ``MultiLevelCache`` of this package (as does
    any loaded ``bruno_memory`` module that had imported the reference classes by
    name), ``except bruno_memory.exceptions.CacheError`` catches the errors they raise,
    and ``isinstance(cache, bruno_memory.utils.cache.CacheInterface)`` holds for them.
    Idempotent. Raises ImportError when bruno-memory is not installed.
    """
    import bruno_memory_c
    from bruno_memory_c import _core

    cache, utils, exceptions = _import_bruno_cache()

    # Our CacheError, made a subclass of bruno-memory's as well (once).
    theirs = exceptions.CacheError
    current = _core._get_cache_error()
    if not issubclass(current, theirs):
        combined: Any = _CombinedMeta(
            "CacheError",
            (current, theirs),
            {"__module__": "bruno_memory_c", "__doc__": current.__doc__,
             # pickled (multiprocessing, concurrent.futures) by what it is, not by a
             # name: the receiving process may or may not have called install()
             "__reduce__": _reduce_cache_error, "_bruno_combined": True},
        )
        _core._set_cache_error(combined)

    ours = {name: getattr(bruno_memory_c, name) for name in _NAMES}
    originals = {name: getattr(cache, name) for name in _NAMES}
    for cls in ours.values():
        cache.CacheInterface.register(cls)
    for module in (cache, utils):
        for name, cls in ours.items():
            setattr(module, name, cls)
    cache.REDIS_AVAILABLE = True
    # Modules of bruno-memory that imported the reference classes by name.
    replace = {id(cls): ours[name] for name, cls in originals.items() if cls is not ours[name]}
    for modname, module in list(sys.modules.items()):
        if module is None or not (modname == "bruno_memory" or modname.startswith("bruno_memory.")):
            continue
        for attr, value in list(vars(module).items()):
            if id(value) in replace and isinstance(value, type):
                setattr(module, attr, replace[id(value)])
