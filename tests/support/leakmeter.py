"""Memory meters for the leak tests that measure the same thing in every build.

Why not ``sys.getallocatedblocks()`` or glibc's ``mallinfo2()``: ``make test-asan`` runs
the suite with ``PYTHONMALLOC=malloc`` and ``LD_PRELOAD=libasan.so``. There
``sys.getallocatedblocks()`` is always 0 (it counts pymalloc's blocks, and pymalloc is
off), and ``mallinfo2()`` describes glibc's heap, which nothing uses any more (ASan's
allocator serves every ``malloc``): a check built on either passes whatever leaks.

What the leak tests use instead, each working in both builds:

- ``tracemalloc``: every allocation made through Python's allocators (objects,
  ``PyMem_Malloc`` — the LRU table's nodes and buckets —, ``PyMem_RawMalloc``),
  whatever allocator serves them (pymalloc, or ``malloc`` under ASan).
- ``native_heap_bytes()``: what the C allocator has handed out and not taken back,
  for what tracemalloc cannot see (the I/O thread's ``malloc``: requests, replies,
  buffers, hiredis). Normal build: glibc's ``mallinfo2()`` (``uordblks + hblkhd``,
  every arena). ASan build: ASan's own allocator statistics,
  ``__sanitizer_get_current_allocated_bytes()`` (the sanitizer allocator interface;
  it counts every ``malloc`` of the process, Python's included, and a freed chunk
  counts as freed when it enters the quarantine).
- refcounts (``sys.getrefcount``) and live objects (``gc.get_objects()``, weakrefs).

``NATIVE_METER`` names the meter in use; ``test_the_memory_meters_see_allocations`` (in
tests/core/test_leakmeter.py) fails loudly if a meter is blind in the running build (it
allocates known amounts and requires each meter to see them).
"""
from __future__ import annotations

import ctypes
import gc
import sys
import tracemalloc

_libc = ctypes.CDLL(None)


def _asan_counter():
    """ASan's allocated-bytes counter, when ASan's runtime is in the process."""
    try:
        fn = _libc.__sanitizer_get_current_allocated_bytes
    except AttributeError:
        return None
    fn.restype = ctypes.c_size_t
    fn.argtypes = []
    return fn


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


_ASAN_ALLOCATED = _asan_counter()
UNDER_ASAN = _ASAN_ALLOCATED is not None

if UNDER_ASAN:
    NATIVE_METER = "ASan allocator statistics (__sanitizer_get_current_allocated_bytes)"
else:
    NATIVE_METER = "glibc mallinfo2() (uordblks + hblkhd)"
    _mallinfo2 = _libc.mallinfo2
    _mallinfo2.restype = _MallInfo2
    _mallinfo2.argtypes = []


def native_heap_bytes() -> int:
    """Bytes the C allocator has handed out and not taken back (see the module doc)."""
    if _ASAN_ALLOCATED is not None:
        return int(_ASAN_ALLOCATED())
    info = _mallinfo2()
    return int(info.uordblks + info.hblkhd)


_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]
_free = _libc.free
_free.restype = None
_free.argtypes = [ctypes.c_void_p]


def raw_malloc(size: int) -> int:
    """malloc(size) of the C library (for the meters' self-test); free with raw_free."""
    pointer = _malloc(size)
    assert pointer, "malloc failed"
    ctypes.memset(pointer, 0x5A, size)  # touched: really in use
    return pointer


def raw_free(pointer: int) -> None:
    _free(pointer)


def quiesce() -> None:
    """Empty what the interpreter keeps on its own and refills at will: a full
    collection (which also empties the object free lists), and the type attribute
    cache. That cache (4,096 slots) holds a reference to the attribute name of each
    lookup, in a slot chosen by the name's address: a C call such as
    ``PyObject_CallMethod(f, "__round__", ...)`` makes a new name each time, and with
    ``malloc`` underneath (the ASan build), where freed addresses are not reused at
    once, each lands in another slot — up to 4,096 names held, which a tracemalloc
    window counts as growth (their predecessors were allocated before it started)."""
    gc.collect()
    sys._clear_type_cache()


class Growth:
    """``with Growth() as g: ...`` -> ``g.traced`` (tracemalloc bytes) and ``g.native``
    (``native_heap_bytes()``) gained inside the block, each read after ``quiesce()``.

    The native reading is taken outside tracemalloc's start/stop: tracemalloc's own
    tables are ``malloc``'d, and under ASan the native meter counts them."""

    def __enter__(self) -> "Growth":
        quiesce()
        self._native0 = native_heap_bytes()
        tracemalloc.start()
        quiesce()
        self._traced0 = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc) -> None:
        quiesce()
        self.traced = tracemalloc.get_traced_memory()[0] - self._traced0
        tracemalloc.stop()
        quiesce()
        self.native = native_heap_bytes() - self._native0

    def __repr__(self) -> str:
        return (f"Growth(traced={getattr(self, 'traced', None)}, "
                f"native={getattr(self, 'native', None)} by {NATIVE_METER})")
