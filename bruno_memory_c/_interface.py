"""CacheInterface: the abstract interface every cache implements (as in bruno-memory)."""
from abc import ABC, abstractmethod
from typing import Any


class CacheInterface(ABC):
    """Abstract interface for cache implementations.

    Our C types are registered as virtual subclasses; a Python class may also
    inherit from it and implement the methods as ``async def``.
    """

    @abstractmethod
    async def get(self, key: Any) -> Any | None:
        """Get value from cache."""

    @abstractmethod
    async def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """Set value in cache with optional TTL."""

    @abstractmethod
    async def delete(self, key: Any) -> bool:
        """Delete key from cache."""

    @abstractmethod
    async def exists(self, key: Any) -> bool:
        """Check if key exists in cache."""

    @abstractmethod
    async def clear(self) -> None:
        """Clear all cache entries."""

    @abstractmethod
    async def get_many(self, keys: list[Any]) -> dict[Any, Any]:
        """Get multiple values from cache."""

    @abstractmethod
    async def set_many(self, items: dict[Any, Any], ttl: float | None = None) -> None:
        """Set multiple values in cache."""

    @abstractmethod
    async def get_stats(self) -> dict[str, Any]:
        """Get cache statistics."""
