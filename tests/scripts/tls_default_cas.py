"""RedisCache(ssl=True) with no ssl_ca_certs / ssl_ca_path, that is with the default CA
certificates (tests/redis/test_tls.py: SSL_CERT_FILE and the fallback bundles), against
the TLS server on 127.0.0.1:PORT: prints "ok" after a set/get round trip, or "error: "
and the CacheError's message.

    python -m tests.scripts.tls_default_cas PORT
"""
import asyncio
import sys

from bruno_memory_c import CacheError, RedisCache


async def main(port: int) -> str:
    cache = RedisCache(host="127.0.0.1", port=port, ssl=True, prefix="tls-default:",
                       connect_timeout=5.0, socket_timeout=10.0)
    try:
        await cache.connect()
        await cache.set("k", ["default", "cas"])
        assert await cache.get("k") == ["default", "cas"]
        return "ok"
    except CacheError as e:
        return f"error: {e}"
    finally:
        await cache.disconnect()


print(asyncio.run(main(int(sys.argv[1]))))
