"""The package builds as an sdist and a wheel that install into a fresh venv."""
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMOKE = """
import asyncio, inspect
import bruno_memory_c
from bruno_memory_c.utils.cache import InMemoryCache, MultiLevelCache, CacheInterface
assert bruno_memory_c.__file__.startswith(%r), bruno_memory_c.__file__
async def main():
    cache = InMemoryCache(max_size=2)
    await cache.set("a", 1)
    assert await cache.get("a") == 1
    assert isinstance(cache, CacheInterface)
    multi = MultiLevelCache(InMemoryCache(), None)   # and its generic path's module
    await multi.set("m", 2)
    assert await multi.get("m") == 2 and multi.stats()["l1_hits"] == 1
    class L2:  # any other L2: the generic path (bruno_memory_c/_multilevel.py)
        async def get(self, key):
            return None
    assert await MultiLevelCache(InMemoryCache(), L2()).get("x") is None
    return cache.stats()["hits"]
assert asyncio.run(main()) == 1
try:  # no bruno-memory in this venv
    bruno_memory_c.install()
except ImportError as e:
    assert "bruno-memory" in str(e)
else:
    raise AssertionError("install() without bruno-memory")
print("ok", bruno_memory_c.__version__)
"""


def test_sdist_and_wheel_install_into_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), ROOT],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    wheels = list(dist.glob("*.whl"))
    sdists = list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    for artifact in (wheels[0], sdists[0]):
        env_dir = tmp_path / ("venv-" + artifact.suffix.strip("."))
        venv.create(env_dir, with_pip=True)
        py = str(env_dir / "bin" / "python")
        args = [py, "-m", "pip", "install", "-q", "--no-deps", str(artifact)]
        if artifact in sdists:
            # building the sdist needs setuptools; take the running environment's
            args[4:4] = ["--no-build-isolation"]
            subprocess.run([py, "-m", "pip", "install", "-q", "setuptools>=77", "wheel"],
                           check=True, capture_output=True)
        subprocess.run(args, check=True, capture_output=True, text=True)
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        out = subprocess.run([py, "-c", SMOKE % site], check=True, capture_output=True,
                             text=True, cwd=tmp_path).stdout
        assert out.startswith("ok 0.1.0")
