"""300,000 InMemoryCaches, each stored in the next; dropping the outermost deallocates
them one inside the other (inmemory/test_leaks.py). Prints "survived" if the process
does not crash doing it."""
from bruno_memory_c import InMemoryCache
from tests.support import drive

inner = InMemoryCache()
for _ in range(300_000):
    outer = InMemoryCache()
    drive(outer.set("inner", inner))
    inner = outer
del outer
del inner  # 300,000 nested deallocations
print("survived", flush=True)
