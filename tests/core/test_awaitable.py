"""The awaitable every data method returns works wherever a coroutine works, under asyncio
and uvloop (README "The awaitable"; ARCHITECTURE "CacheAwaitable (awaitable.c)")."""
import asyncio
import collections.abc
import gc
import inspect
import pickle
import threading
import warnings

import pytest
import uvloop

from bruno_memory_c import CacheAwaitable, InMemoryCache
from tests.support import EXPECTED_LOOP_TYPE, LOOP_FACTORIES, drive

REUSED = "cannot reuse already awaited coroutine"


def filled_cache():
    cache = InMemoryCache()
    drive(cache.set("k", "v"))
    drive(cache.set("t", (1, 2)))
    return cache


def every_method_call(cache):
    """(name, awaitable, expected result) for each method of a cache holding k -> v."""
    return [
        ("get", cache.get("k"), "v"),
        ("set", cache.set("k2", 2), None),
        ("delete", cache.delete("k2"), True),
        ("exists", cache.exists("k"), True),
        ("get_many", cache.get_many(["k", "zz"]), {"k": "v"}),
        ("set_many", cache.set_many({"m": 1}), None),
        ("get_stats", cache.get_stats(), None),
        ("clear", cache.clear(), None),
    ]


# ---------------------------------------------------------------------------- the loop machinery


async def test_runs_under_expected_loop(async_loop_name):
    loop = asyncio.get_running_loop()
    assert isinstance(loop, EXPECTED_LOOP_TYPE[async_loop_name])
    assert isinstance(loop, uvloop.Loop) == (async_loop_name == "uvloop")


def test_both_loops_collected(request):
    """Every async test of this module is collected once per loop implementation."""
    ids = [item.name for item in request.session.items
           if item.name.startswith("test_runs_under_expected_loop")]
    assert sorted(ids) == [
        "test_runs_under_expected_loop[asyncio]", "test_runs_under_expected_loop[uvloop]"]


# ---------------------------------------------------------------------------- type checks


def test_awaitable_type_and_protocols():
    cache = filled_cache()
    aw = cache.get("k")
    assert type(aw) is CacheAwaitable
    assert inspect.isawaitable(aw)
    assert asyncio.iscoroutine(aw)
    assert isinstance(aw, collections.abc.Coroutine)
    assert isinstance(aw, collections.abc.Awaitable)
    assert aw.__await__() is aw
    assert iter(aw) is aw
    assert aw.__qualname__ == "InMemoryCache.get"
    assert aw.__name__ == "InMemoryCache.get"
    assert aw.done is True  # in-memory work is finished at call time
    assert "InMemoryCache.get" in repr(aw)
    for name in ("send", "throw", "close", "__await__"):
        assert callable(getattr(aw, name))
    with pytest.raises(TypeError):
        CacheAwaitable()
    aw.close()


def test_every_method_returns_an_awaitable():
    cache = filled_cache()
    for name, aw, _ in every_method_call(cache):
        assert type(aw) is CacheAwaitable, name
        assert aw.__qualname__ == f"InMemoryCache.{name}"
        aw.close()
    asyncio.run(_start_stop_types(cache))


async def _start_stop_types(cache):
    for aw in (cache.start(), cache.stop()):
        assert type(aw) is CacheAwaitable
        assert await aw is None


# ---------------------------------------------------------------------------- asyncio forms


async def test_await_every_method():
    cache = filled_cache()
    for name, aw, expected in every_method_call(cache):
        result = await aw
        if name == "get_stats":
            assert result["type"] == "in_memory"
        else:
            assert result == expected, name


async def test_create_task():
    cache = filled_cache()
    task = asyncio.create_task(cache.get("k"))
    assert await task == "v"
    assert task.done() and task.result() == "v"


async def test_ensure_future():
    cache = filled_cache()
    fut = asyncio.ensure_future(cache.get("t"))
    assert isinstance(fut, asyncio.Task)
    assert await fut == (1, 2)


async def test_gather():
    cache = filled_cache()
    results = await asyncio.gather(
        cache.get("k"), cache.set("x", 1), cache.exists("x"), cache.get_many(["k", "x"]),
        cache.delete("nope"), cache.get("t"))
    assert results == ["v", None, True, {"k": "v", "x": 1}, False, (1, 2)]


async def test_gather_many_tasks():
    cache = InMemoryCache(max_size=10_000)
    await asyncio.gather(*(cache.set(i, i * i) for i in range(1000)))
    results = await asyncio.gather(*(cache.get(i) for i in range(1000)))
    assert results == [i * i for i in range(1000)]


async def test_wait_for():
    cache = filled_cache()
    assert await asyncio.wait_for(cache.get("k"), timeout=10) == "v"
    assert await asyncio.wait_for(cache.get("k"), timeout=None) == "v"


async def test_shield():
    cache = filled_cache()
    assert await asyncio.shield(cache.get("k")) == "v"


async def test_task_group():
    cache = filled_cache()
    async with asyncio.TaskGroup() as tg:
        t1 = tg.create_task(cache.get("k"))
        t2 = tg.create_task(cache.set("tg", 1))
        t3 = tg.create_task(cache.get_many(["k", "t"]))
    assert t1.result() == "v"
    assert t2.result() is None
    assert t3.result() == {"k": "v", "t": (1, 2)}
    assert await cache.get("tg") == 1


async def test_wait_and_as_completed():
    cache = filled_cache()
    done, pending = await asyncio.wait([asyncio.ensure_future(cache.get("k"))])
    assert not pending and [t.result() for t in done] == ["v"]
    results = [await f for f in asyncio.as_completed([cache.get("k"), cache.get("t")])]
    assert sorted(results, key=str) == [(1, 2), "v"]


async def test_inside_python_coroutine_and_yield_from_style():
    cache = filled_cache()

    async def inner():
        return await cache.get("k")

    assert await inner() == "v"
    assert await asyncio.create_task(inner()) == "v"


async def test_run_coroutine_threadsafe():
    cache = filled_cache()
    loop = asyncio.get_running_loop()

    def from_thread():
        return asyncio.run_coroutine_threadsafe(cache.get("k"), loop).result(timeout=30)

    assert await loop.run_in_executor(None, from_thread) == "v"


async def test_cancelled_before_first_step():
    cache = filled_cache()
    task = asyncio.create_task(cache.set("c", 1))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert await cache.get("c") == 1  # the operation happened at call time


def test_asyncio_run_directly(loop_name):
    cache = filled_cache()
    if loop_name == "asyncio":
        assert asyncio.run(cache.get("k")) == "v"
        assert asyncio.run(cache.get("t")) == (1, 2)
        assert asyncio.run(cache.set("r", 1)) is None
    else:
        policy = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        try:
            assert asyncio.run(cache.get("k")) == "v"
            assert asyncio.run(cache.get("t")) == (1, 2)
            assert asyncio.run(cache.set("r", 1)) is None
        finally:
            asyncio.set_event_loop_policy(policy)
        assert uvloop.run(cache.get("k")) == "v"
    assert drive(cache.get("r")) == 1


def test_runner_and_run_until_complete(loop_factory):
    cache = filled_cache()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert runner.run(cache.get("k")) == "v"
        assert runner.get_loop().run_until_complete(cache.get("t")) == (1, 2)
    loop = loop_factory()
    try:
        assert loop.run_until_complete(cache.get_many(["k"])) == {"k": "v"}
        task = loop.create_task(cache.exists("k"))
        assert loop.run_until_complete(task) is True
    finally:
        loop.close()


# ---------------------------------------------------------------------------- coroutine protocol


def test_send_none_raises_stop_iteration_with_result():
    cache = filled_cache()
    with pytest.raises(StopIteration) as info:
        cache.get("k").send(None)
    assert info.value.value == "v"
    with pytest.raises(StopIteration) as info:
        cache.set("a", 1).send(None)
    assert info.value.value is None
    assert info.value.args == ()


def test_stop_iterations_kept_by_the_caller_keep_their_values():
    """The StopIteration a ready result is handed over with is recycled once dropped
    (see ARCHITECTURE, "StopIteration"): one still held keeps its value and args, and
    it is a StopIteration in every respect, pickling included."""
    cache = InMemoryCache()
    for i in range(600):  # more than the free list holds
        drive(cache.set(f"k{i}", i))
    kept = []
    for _ in range(2):  # the second round reuses what the first one released
        kept.clear()
        for i in range(600):
            try:
                cache.get(f"k{i}").send(None)
            except StopIteration as stop:
                kept.append(stop)
        assert [e.value for e in kept] == list(range(600))
        assert [e.args for e in kept] == [(i,) for i in range(600)]
        assert all(e.__traceback__ is not None for e in kept)  # raised through this frame
    copy = pickle.loads(pickle.dumps(kept[7]))
    assert isinstance(copy, StopIteration) and copy.value == 7 and copy.args == (7,)
    assert repr(kept[3]) == "StopIteration(3)"
    with pytest.raises(StopIteration) as info:
        next(cache.set("a", 1))  # a None result through the iterator protocol
    assert info.value.value is None and info.value.args == ()


@pytest.mark.parametrize("value", [(1, 2), (), ("one",), ((1, 2),), (None,)])
def test_stop_iteration_value_is_the_tuple_itself(value):
    cache = InMemoryCache()
    drive(cache.set("t", value))
    with pytest.raises(StopIteration) as info:
        cache.get("t").send(None)
    assert info.value.value is value
    with pytest.raises(StopIteration) as info:
        next(cache.get("t"))
    assert info.value.value is value
    with pytest.raises(StopIteration) as info:
        cache.get("t").__await__().__next__()
    assert info.value.value is value


@pytest.mark.parametrize("value", [StopIteration("inner"), ValueError("stored"),
                                   KeyboardInterrupt(), asyncio.CancelledError()])
async def test_exception_values_are_returned_not_raised(value):
    cache = InMemoryCache()
    await cache.set("e", value)
    assert await cache.get("e") is value
    with pytest.raises(StopIteration) as info:
        cache.get("e").send(None)
    assert info.value.value is value


async def test_tuple_result_through_await_and_tasks():
    cache = InMemoryCache()
    value = (1, 2)
    await cache.set("t", value)
    assert await cache.get("t") is value
    assert await asyncio.create_task(cache.get("t")) is value
    assert (await asyncio.gather(cache.get("t")))[0] is value


async def test_reawait_raises_runtime_error():
    cache = filled_cache()
    aw = cache.get("k")
    assert await aw == "v"
    with pytest.raises(RuntimeError, match=REUSED):
        await aw
    with pytest.raises(RuntimeError, match=REUSED):
        aw.send(None)
    with pytest.raises(RuntimeError, match=REUSED):
        next(aw)


async def test_reawait_error_for_none_result():
    cache = filled_cache()
    aw = cache.set("x", 1)
    await aw
    with pytest.raises(RuntimeError, match=REUSED):
        await aw


def test_send_non_none_before_start():
    cache = filled_cache()
    aw = cache.get("k")
    with pytest.raises(TypeError, match="non-None"):
        aw.send(1)
    # as with a coroutine, the failed send did not start it
    assert drive(aw) == "v"
    with pytest.raises(RuntimeError, match=REUSED):
        aw.send(None)


def test_throw_raises_the_exception():
    cache = filled_cache()
    exc = ValueError("boom")
    aw = cache.set("thrown", 1)
    with pytest.raises(ValueError) as info:
        aw.throw(exc)
    assert info.value is exc
    with pytest.raises(RuntimeError, match=REUSED):
        aw.send(None)
    assert drive(cache.get("thrown")) == 1  # the work was done at call time


def test_throw_forms():
    cache = filled_cache()
    with pytest.raises(KeyError):
        cache.get("k").throw(KeyError)
    with pytest.raises(ValueError, match="msg"):
        cache.get("k").throw(ValueError, "msg")
    with pytest.raises(ValueError, match="from-instance"):
        cache.get("k").throw(ValueError, ValueError("from-instance"))
    with pytest.raises(TypeError):
        cache.get("k").throw(ValueError("x"), "not allowed")
    with pytest.raises(TypeError):
        cache.get("k").throw(42)
    with pytest.raises(TypeError):
        cache.get("k").throw()
    try:
        raise OSError("with tb")
    except OSError as e:
        tb = e.__traceback__
    with pytest.raises(OSError) as info:
        cache.get("k").throw(OSError, OSError("x"), tb)
    assert info.value.__traceback__ is not None
    with pytest.raises(GeneratorExit):
        cache.get("k").throw(GeneratorExit)


def test_throw_after_completion():
    cache = filled_cache()
    aw = cache.get("k")
    assert drive(aw) == "v"
    with pytest.raises(ZeroDivisionError):
        aw.throw(ZeroDivisionError)


def test_close():
    cache = filled_cache()
    aw = cache.get("k")
    assert aw.close() is None
    assert aw.close() is None
    with pytest.raises(RuntimeError, match=REUSED):
        aw.send(None)
    done = cache.get("k")
    assert drive(done) == "v"
    assert done.close() is None
    aw = cache.set("closed", 1)
    aw.close()
    assert drive(cache.get("closed")) == 1


def test_work_happens_at_call_time_without_await():
    cache = InMemoryCache(max_size=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")  # a hit: a is the most recently used
    cache.set("c", 3)  # evicts b
    cache.delete("nope")
    stats = cache.stats()
    assert (stats["size"], stats["hits"], stats["evictions"]) == (2, 1, 1)
    assert drive(cache.get_many(["a", "b", "c"])) == {"a": 1, "c": 3}


def test_bad_input_raises_at_call_not_await():
    cache = InMemoryCache()
    with pytest.raises(TypeError):
        cache.get([])
    with pytest.raises(ValueError):
        cache.set("k", 1, ttl=-1)
    with pytest.raises(TypeError):
        cache.get_many(1)


@pytest.mark.parametrize("inside_loop", [False, True])
def test_never_awaited_emits_no_warning(inside_loop, loop_factory):
    cache = filled_cache()

    def make_and_drop():
        for _ in range(3):
            for _name, aw, _expected in every_method_call(cache):
                del aw
        cache.get("k")
        cache.set("fresh", [1, 2])  # value tracked by the GC: awaitable tracked too
        cache.get("fresh")
        cache.get_many(["fresh"])
        gc.collect()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if inside_loop:
            async def main():
                make_and_drop()
                cache.start()
                cache.stop()
                await asyncio.sleep(0)

            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(main())
        else:
            make_and_drop()
        gc.collect()
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []
    assert caught == []
    assert drive(cache.get("fresh")) == [1, 2]


def test_python_coroutine_control_does_warn():
    """Sanity check of the method above: a real never-awaited coroutine does warn."""

    async def coro():
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = coro()
        del c
        gc.collect()
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)


# ---------------------------------------------------------------------------- never suspends


async def test_awaiting_never_suspends_the_task():
    """A task scheduled with call_soon/create_task can only run when the current task
    yields to the loop; if no cache await suspends, it cannot have run in between."""
    cache = InMemoryCache(max_size=100)
    flag = []

    async def flipper():
        flag.append("task")

    loop = asyncio.get_running_loop()
    task = asyncio.create_task(flipper())
    loop.call_soon(flag.append, "callback")
    for i in range(200):
        await cache.set(i, i)
        assert await cache.get(i) == i
        await cache.exists(i)
        await cache.get_many([i, i - 1])
        await cache.set_many({("m", i): i})
        await cache.delete(("m", i))
        await cache.get_stats()
        assert flag == [], f"the loop ran other work during iteration {i}"
    await cache.start()
    await cache.stop()
    await cache.clear()
    assert flag == []
    await asyncio.sleep(0)  # a real suspension: now the others run
    await task
    assert sorted(flag) == ["callback", "task"]


async def test_first_send_completes():
    """At the protocol level: the first send() finishes; nothing is ever yielded."""
    cache = filled_cache()
    for name, aw, _ in every_method_call(cache):
        with pytest.raises(StopIteration):
            aw.send(None)


async def test_gathered_tasks_each_complete_in_one_step():
    cache = filled_cache()
    order = []

    async def worker(n):
        order.append(("start", n))
        await cache.get("k")
        await cache.set(n, n)
        order.append(("end", n))

    await asyncio.gather(*(worker(n) for n in range(5)))
    # each worker runs start..end without interleaving with another
    assert order == [x for n in range(5) for x in (("start", n), ("end", n))]


# ---------------------------------------------------------------------------- results and errors from awaiting


async def test_result_identity_through_all_forms():
    cache = InMemoryCache()
    value = object()
    await cache.set("o", value)
    assert await cache.get("o") is value
    assert await asyncio.create_task(cache.get("o")) is value
    assert await asyncio.ensure_future(cache.get("o")) is value
    assert await asyncio.wait_for(cache.get("o"), 5) is value
    assert await asyncio.shield(cache.get("o")) is value
    assert (await asyncio.gather(cache.get("o")))[0] is value


def test_many_loops_in_sequence():
    cache = InMemoryCache()
    for i in range(20):
        factory = LOOP_FACTORIES["uvloop" if i % 2 else "asyncio"]
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(cache.set(i, i))
            assert runner.run(cache.get(i)) == i
    assert cache.stats()["size"] == 20


async def test_threads_calling_cache():
    """Calls from several threads (each with its own GIL turns) keep the table sound."""
    cache = InMemoryCache(max_size=500)
    errors = []

    def worker(n):
        try:
            for i in range(2000):
                drive(cache.set((n, i % 700), i))
                drive(cache.get((n, (i * 7) % 700)))
                if i % 50 == 0:
                    drive(cache.get_many([(n, j) for j in range(10)]))
                    drive(cache.delete((n, i % 13)))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    assert errors == []
    cache._check_consistency()
    assert cache.stats()["size"] <= 500


@pytest.mark.parametrize("args", [
    (KeyError, ValueError("v")),    # an instance of another class: the class's argument
    (KeyError, KeyError("k")),      # an instance of the class: raised as it is
    (LookupError, KeyError("k")),   # an instance of a subclass: raised as it is
    (KeyError, ("a", "b")),         # a tuple: the class's arguments
    (KeyError("k"),),
    (StopIteration(5),),            # PEP 479: RuntimeError from it
    (StopIteration, 5),
], ids=["other-instance", "same-class", "subclass", "tuple", "instance", "stop-instance",
        "stop-class"])
def test_throw_raises_what_a_coroutine_would(args):
    """throw() makes the exception a coroutine that does not catch it would raise: the
    same type, arguments, and for a StopIteration a RuntimeError caused by it (a Task
    would otherwise take it for the awaitable's result). (Before: the value was raised
    whatever its class, and StopIteration escaped as is.)"""

    async def coroutine():
        return None

    def outcome(target):
        with pytest.raises(BaseException) as info, warnings.catch_warnings():
            # throw(type, value) is deprecated on 3.12+, for coroutines and ours alike
            warnings.simplefilter("ignore", DeprecationWarning)
            target.throw(*args)
        e = info.value
        return type(e), e.args, type(e.__cause__), getattr(e.__cause__, "args", None)

    expected = outcome(coroutine())
    if expected[0] is StopIteration:
        # A StopIteration thrown into a coroutine escapes as it is on 3.12 and 3.13 (at
        # the first await, or at one on an iterator), which a Task would take for a
        # result: ours follows PEP 479 on every version, as a coroutine raising it does.
        async def raising():
            raise StopIteration(5)
        with pytest.raises(RuntimeError) as info:
            raising().send(None)
        e = info.value
        expected = type(e), e.args, type(e.__cause__), e.__cause__.args
    assert outcome(InMemoryCache().get("x")) == expected
