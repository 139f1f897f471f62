"""Type stubs for the C core of bruno_memory_c (``bruno_memory_c._core``).

The data methods of the three caches are declared ``async def``: at runtime each
returns a ``CacheAwaitable`` (a coroutine-like object whose work is already done when
the method returns), or, for a ``MultiLevelCache`` over levels that are not both ours,
a real coroutine. To a type checker both are coroutines of the same result, so the
values they give can be passed to ``await``, ``asyncio.create_task``, ``gather``,
``wait_for``, ``asyncio.run`` and ``TaskGroup.create_task``, and the classes satisfy
protocols written with ``async def`` (``CacheInterface``'s methods are ``async def``).
"""
import builtins
from collections.abc import Awaitable, Coroutine, Generator, Hashable, Iterable, Mapping
from types import GenericAlias, TracebackType
from typing import Any, Protocol, TypeVar, final, overload, type_check_only

from typing_extensions import Self, disjoint_base

_T_co = TypeVar("_T_co", covariant=True)
_KT = TypeVar("_KT", bound=Hashable)

class CacheError(Exception):
    """Raised by the caches for cache failures (Redis errors, values JSON cannot encode)."""

@final
class StopIteration(builtins.StopIteration):
    """The StopIteration a cache awaitable finishes with (a subclass, made cheaply)."""

@final
class CacheAwaitable(Coroutine[Any, Any, _T_co]):
    """Coroutine-like result of a cache operation (its work was done by the call).

    Not created directly: every data method of the caches returns one.
    ``asyncio.iscoroutine`` and ``inspect.isawaitable`` are true for it.
    """

    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any, /) -> Any: ...
    @overload
    def throw(
        self,
        typ: type[BaseException],
        val: BaseException | object = None,
        tb: TracebackType | None = None,
        /,
    ) -> Any: ...
    @overload
    def throw(
        self, typ: BaseException, val: None = None, tb: TracebackType | None = None, /
    ) -> Any: ...
    def close(self) -> None: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...
    @property
    def done(self) -> bool:
        """True once the result is known."""

    @property
    def __name__(self) -> str:
        """The method's qualified name, as a coroutine's (``InMemoryCache.get``)."""

    @property
    def __qualname__(self) -> str: ...

@disjoint_base
class InMemoryCache:
    """In-memory LRU cache with TTL, in C."""

    def __init__(
        self,
        max_size: int = 1000,
        default_ttl: float | None = 3600,
        cleanup_interval: float = 60,
    ) -> None: ...
    max_size: int
    default_ttl: float | None
    @property
    def cleanup_interval(self) -> float: ...
    @property
    def running(self) -> bool: ...
    async def get(self, key: Hashable) -> Any | None: ...
    async def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None: ...
    async def delete(self, key: Hashable) -> bool: ...
    async def exists(self, key: Hashable) -> bool: ...
    async def clear(self) -> None: ...
    async def get_many(self, keys: Iterable[_KT]) -> dict[_KT, Any]: ...
    async def set_many(self, items: Mapping[Any, Any], ttl: float | None = None) -> None: ...
    async def get_stats(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

@disjoint_base
class RedisCache:
    """Redis-backed cache, in C (one pipelined connection run by a background thread)."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        prefix: str = "bruno:cache:",
        default_ttl: float | None = 3600,
        max_connections: int = 10,
        *,
        username: str | None = None,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        socket_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        unix_socket_path: str | None = None,
        max_reply_bytes: int = 536870912,
        ssl: bool = False,
        ssl_ca_certs: str | None = None,
        ssl_ca_path: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_password: str | bytes | None = None,
        ssl_cert_reqs: str | int | None = "required",
        ssl_check_hostname: bool = True,
        ssl_min_version: str | int | None = None,
        ssl_ciphers: str | None = None,
        sentinels: Iterable[tuple[str, int]] | None = None,
        service_name: str | None = None,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        sentinel_ssl: bool = False,
        cluster: bool | None = None,
        startup_nodes: Iterable[tuple[str, int]] | None = None,
        read_from_replicas: bool = False,
    ) -> None: ...
    @classmethod
    def from_url(
        cls,
        url: str,
        /,
        *,
        host: str = ...,
        port: int = ...,
        db: int = ...,
        password: str | None = ...,
        prefix: str = ...,
        default_ttl: float | None = ...,
        max_connections: int = ...,
        username: str | None = ...,
        pool_size: int | None = ...,
        max_overflow: int | None = ...,
        socket_timeout: float | None = ...,
        connect_timeout: float | None = ...,
        unix_socket_path: str | None = ...,
        max_reply_bytes: int = ...,
        ssl: bool = ...,
        ssl_ca_certs: str | None = ...,
        ssl_ca_path: str | None = ...,
        ssl_certfile: str | None = ...,
        ssl_keyfile: str | None = ...,
        ssl_password: str | bytes | None = ...,
        ssl_cert_reqs: str | int | None = ...,
        ssl_check_hostname: bool = ...,
        ssl_min_version: str | int | None = ...,
        ssl_ciphers: str | None = ...,
        sentinels: Iterable[tuple[str, int]] | None = ...,
        service_name: str | None = ...,
        sentinel_username: str | None = ...,
        sentinel_password: str | None = ...,
        sentinel_ssl: bool = ...,
        cluster: bool | None = ...,
        startup_nodes: Iterable[tuple[str, int]] | None = ...,
        read_from_replicas: bool = ...,
    ) -> Self:
        """A cache for ``redis://[user:password@]host[:port][/db][?option=value...]``,
        ``rediss://...`` (TLS, with ``ssl_*`` options), ``unix:///path/redis.sock?db=N`` or
        ``redis+sentinel://host:port,host:port/service[/db]`` (``rediss+sentinel://``) or
        ``redis://host:port,host:port/0?cluster=true`` (a Redis Cluster's startup nodes);
        keyword arguments override the URL."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def db(self) -> int: ...
    @property
    def password(self) -> str | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def prefix(self) -> str: ...
    @property
    def default_ttl(self) -> float | None: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def pool_size(self) -> int | None: ...
    @property
    def max_overflow(self) -> int | None: ...
    @property
    def unix_socket_path(self) -> str | None: ...
    @property
    def socket_timeout(self) -> float | None: ...
    @property
    def connect_timeout(self) -> float | None: ...
    @property
    def max_reply_bytes(self) -> int: ...
    @property
    def ssl(self) -> bool: ...
    @property
    def sentinels(self) -> tuple[tuple[str, int], ...] | None: ...
    @property
    def service_name(self) -> str | None: ...
    @property
    def sentinel_username(self) -> str | None: ...
    @property
    def sentinel_password(self) -> str | None: ...
    @property
    def sentinel_ssl(self) -> bool: ...
    @property
    def cluster(self) -> bool | None: ...
    @property
    def startup_nodes(self) -> tuple[tuple[str, int], ...] | None: ...
    @property
    def read_from_replicas(self) -> bool: ...
    @property
    def stats_key(self) -> str: ...
    @property
    def connected(self) -> bool: ...
    @property
    def _connected(self) -> bool: ...  # the reference's name for `connected`
    async def connect(self) -> None: ...
    async def disconnect(self) -> None: ...
    async def get(self, key: Hashable) -> Any | None: ...
    async def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None: ...
    async def delete(self, key: Hashable) -> bool: ...
    async def exists(self, key: Hashable) -> bool: ...
    async def clear(self) -> None: ...
    async def get_many(self, keys: Iterable[_KT]) -> dict[_KT, Any]: ...
    async def set_many(self, items: Mapping[Any, Any], ttl: float | None = None) -> None: ...
    async def get_stats(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc_info: object) -> None: ...

@type_check_only
class _CacheLevel(Protocol):
    """What MultiLevelCache needs of a level: the CacheInterface methods, each
    returning an awaitable (our caches, bruno-memory's, an AsyncMock, your own)."""

    def get(self, key: Any, /) -> Awaitable[Any]: ...
    def set(self, key: Any, value: Any, ttl: Any = ..., /) -> Awaitable[Any]: ...
    def delete(self, key: Any, /) -> Awaitable[Any]: ...
    def exists(self, key: Any, /) -> Awaitable[Any]: ...
    def clear(self) -> Awaitable[Any]: ...
    def get_many(self, keys: Any, /) -> Awaitable[Any]: ...
    def set_many(self, items: Any, ttl: Any = ..., /) -> Awaitable[Any]: ...
    def get_stats(self) -> Awaitable[Any]: ...

@disjoint_base
class MultiLevelCache:
    """An L1 cache in front of an L2 cache; all in C over our two caches."""

    def __init__(
        self,
        l1_cache: _CacheLevel,
        l2_cache: _CacheLevel | None = None,
        promote_on_hit: bool = True,
        *,
        coherent: bool | None = None,
    ) -> None: ...
    # Whether L1 is coherent (coherent= not False, both levels bruno_memory_c's).
    @property
    def coherent(self) -> bool: ...
    # The levels as given (any object: `cache.l1.stats()`, `cache.l2.connect()`).
    l1: Any
    l1_cache: Any
    l2: Any
    l2_cache: Any
    promote_on_hit: bool
    async def get(self, key: Hashable) -> Any | None: ...
    async def set(self, key: Hashable, value: Any, ttl: float | None = None) -> None: ...
    async def delete(self, key: Hashable) -> bool: ...
    async def exists(self, key: Hashable) -> bool: ...
    async def clear(self) -> None: ...
    async def get_many(self, keys: Iterable[_KT]) -> dict[_KT, Any]: ...
    async def set_many(self, items: Mapping[Any, Any], ttl: float | None = None) -> None: ...
    async def get_stats(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...

# Internal (used by bruno_memory_c.install()).
def _get_cache_error() -> type[CacheError]: ...
def _set_cache_error(cls: type[CacheError], /) -> None: ...
