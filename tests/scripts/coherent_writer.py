"""Process B of the coherence tests (tests/multilevel/test_coherent.py): on the server
at PORT, with the prefix PREFIX, do OP on KEY through our RedisCache and exit once Redis
acknowledged it ("done" on stdout).

    python -m tests.scripts.coherent_writer PORT PREFIX KEY set|delete [VALUE]
"""
import asyncio
import json
import sys

from bruno_memory_c import RedisCache


async def main(port: int, prefix: str, key: str, op: str, value: str | None) -> None:
    async with RedisCache(port=port, prefix=prefix) as cache:
        if op == "set":
            await cache.set(key, json.loads(value))
        else:
            assert await cache.delete(key)
    print("done", flush=True)


if __name__ == "__main__":
    port, prefix, key, op = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    asyncio.run(main(port, prefix, key, op, sys.argv[5] if len(sys.argv) > 5 else None))
