"""What every test area uses: every async test runs under the default asyncio loop and
uvloop; the ``redis_server`` fixture; ports that refuse connections; a quiet logger.

pytest-asyncio 1.5 offers the ``pytest_asyncio_loop_factories`` hook for this (overriding
the ``event_loop_policy`` fixture is deprecated there and warns): each async test is
parametrized once per factory, with the factory names as test ids, so that
``test_x[asyncio]`` and ``test_x[uvloop]`` are both collected and run.

Synchronous tests that create their own loops (``asyncio.run``, ``asyncio.Runner``,
start()/stop() across loops) take the ``loop_factory`` / ``loop_name`` fixtures, which are
parametrized the same way.

The areas (core/, inmemory/, redis/, multilevel/, dropin/, packaging/) have conftest.py
files of their own for their fixtures; helpers are imported from ``tests.support``.

Transports: ``redis_server`` (and ``server_options``, for a test starting a RedisServer of
its own) follow the ``transport`` fixture, "tcp" unless the test module says
``TRANSPORTS = ALL_TRANSPORTS`` (tests.support): then each of its tests that uses them
runs once per transport, ``test_x[tls-...]`` against a TLS-only redis-server (the
certificates made once per test process), the caches made with ``server.tls_kwargs``.
``@pytest.mark.transports("tcp")`` keeps one test to the transports it names.

Topologies: a test marked ``@pytest.mark.topologies("standalone", "cluster")`` runs once
per topology; under "cluster" its ``redis_server`` is a ``ClusterTarget``
(tests.support.cluster): the worker's shared 3+3 Redis Cluster over the test's
transport, emptied before the test, with the ``url``, ``tls_kwargs`` and ``command()``
a RedisServer offers (a keyed command goes to its key's node, KEYS/DBSIZE/FLUSHDB to
every primary). Unmarked tests keep one server and their ids.
"""
import contextlib
import functools
import logging

import pytest

# Assertions in the support modules report their operands, as those in test modules do
# (before their first import).
pytest.register_assert_rewrite("tests.support")

from tests.support import LOGGER, LOOP_FACTORIES, run_on_new_loop  # noqa: E402

# The `redis_server` fixture: a real redis-server on a free port, per test.
pytest_plugins = ["bruno_memory_c.testing"]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "transports(*names): run this test over these transports only "
                   "(of its module's TRANSPORTS)")
    config.addinivalue_line(
        "markers", "topologies(*names): run this test once per topology named "
                   "(standalone, cluster)")


def pytest_generate_tests(metafunc):
    """A test using the ``transport`` fixture (through redis_server or server_options)
    runs once per transport of its module's TRANSPORTS (default: "tcp" only)."""
    topologies = metafunc.definition.get_closest_marker("topologies")
    if topologies is not None and "topology" in metafunc.fixturenames:
        assert set(topologies.args) <= {"standalone", "cluster"}, topologies.args
        metafunc.parametrize("topology", topologies.args, scope="function")
    if "transport" not in metafunc.fixturenames:
        return
    transports = tuple(getattr(metafunc.module, "TRANSPORTS", ("tcp",)))
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is not None:
        transports = tuple(t for t in transports if t in marker.args)
    assert transports, f"{metafunc.definition.nodeid}: no transport to run over"
    if transports != ("tcp",):  # (plaintext only: the fixture's default, ids unchanged)
        metafunc.parametrize("transport", transports, scope="function")


@pytest.fixture
def transport() -> str:
    """"tcp" or "tls" (parametrized by pytest_generate_tests)."""
    return "tcp"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate, made
    once per test process (bruno_memory_c.testing.make_tls_files) and shared by its TLS
    servers."""
    from bruno_memory_c.testing import make_tls_files

    return make_tls_files(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def server_options(transport, request) -> dict:
    """RedisServer keyword arguments for the test's transport: {} for "tcp"; for "tls",
    TLS only, with the process's certificates."""
    if transport == "tcp":
        return {}
    assert transport == "tls", transport
    return {"tls": True, "tls_files": request.getfixturevalue("tls_files")}


@pytest.fixture
def topology() -> str:
    """"standalone" or "cluster" (parametrized by the topologies marker)."""
    return "standalone"


@pytest.fixture
def redis_server(server_options, topology, request):
    """A fresh redis-server for one test over its transport, stopped and removed after;
    under the "cluster" topology, the worker's shared cluster, emptied first."""
    if topology == "cluster":
        from tests.support.cluster import ClusterTarget

        cluster = request.getfixturevalue(f"shared_cluster_{request.getfixturevalue('transport')}")
        yield ClusterTarget(cluster)
        return
    from bruno_memory_c.testing import RedisServer

    with RedisServer(**server_options) as server:
        yield server


@pytest.fixture(scope="session")
def shared_cluster_tcp():
    """One 3+3 Redis Cluster per test process (started when first needed)."""
    from bruno_memory_c.testing import RedisCluster

    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def shared_cluster_tls(tls_files):
    """The same over TLS, with the process's certificates."""
    from bruno_memory_c.testing import RedisCluster

    with RedisCluster(tls=True, tls_files=tls_files) as cluster:
        yield cluster


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio hook: run every async test once per event-loop implementation."""
    return LOOP_FACTORIES


def _factory_name(factory) -> str:
    for name, f in LOOP_FACTORIES.items():
        if f is factory:
            return name
    raise AssertionError(f"unknown loop factory {factory!r}")


@pytest.fixture
def async_loop_name(request) -> str:
    """For an async test: the name ("asyncio"/"uvloop") of the loop it runs under."""
    callspec = getattr(request.node, "callspec", None)
    assert callspec is not None, "async test was not parametrized by loop factory"
    return _factory_name(callspec.params["_asyncio_loop_factory"])


@pytest.fixture(params=list(LOOP_FACTORIES), ids=list(LOOP_FACTORIES))
def loop_name(request) -> str:
    """For a synchronous test: the name of the loop implementation to use."""
    return request.param


@pytest.fixture
def loop_factory(loop_name):
    """For a synchronous test: a callable creating a new loop of the selected kind."""
    return LOOP_FACTORIES[loop_name]


@pytest.fixture
def run_in_new_loop(loop_factory):
    """run_in_new_loop(coro_or_awaitable) -> result, on a fresh loop that is closed after."""

    return functools.partial(run_on_new_loop, loop_factory)


@pytest.fixture
def closed_port():
    """A loopback port that refuses connections, held for the whole test so that no
    other test worker's server can take it meanwhile (see testing.refused_port)."""
    from bruno_memory_c.testing import refused_port  # (a plugin: imported by pytest)

    with refused_port() as port:
        yield port


class ReservedPort:
    """A loopback port that refuses connections until release(), for a test that
    later starts a server of its own on it (nobody else's server can take it first)."""

    def __init__(self) -> None:
        from bruno_memory_c.testing import refused_port

        self._hold = contextlib.ExitStack()
        self.port = self._hold.enter_context(refused_port())

    def release(self) -> None:
        self._hold.close()


@pytest.fixture
def reserved_port():
    reserved = ReservedPort()
    yield reserved
    reserved.release()


@pytest.fixture
def quiet_cache_logger():
    """The caches' logger at CRITICAL for the test: failures are logged by design (a
    failed get gives None "and the error logged"), and the fault, load and hardening
    tests provoke thousands of them, which would only slow the tests down; captured
    records would also hold references to the keys that the refcount tests count. (A
    test that checks the logging sets the level itself.) Modules that want it say
    ``pytestmark = pytest.mark.usefixtures("quiet_cache_logger")``."""
    logger = logging.getLogger(LOGGER)
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(old)
