"""README "bruno-memory's own tests pass against ours": its cache tests, run against ours.

At test time this fetches the bruno-memory 0.1.5 sdist from PyPI (nothing of it is kept
in this repository), extracts ``tests/unit/test_cache.py`` into a temporary directory
next to a ``conftest.py`` that calls ``bruno_memory_c.install()`` (a copy of
tests/scripts/reference_suite_conftest.py), and runs it with
pytest in a subprocess. bruno-memory is installed ``--no-deps`` here, so its package
``__init__`` (which imports the whole bruno stack) cannot run: ``install()`` then loads
only the modules the caches live in, which is exactly what this needs.

``TestRedisCache`` patches redis-py (``bruno_memory.utils.cache.aioredis``), which our C
client does not use; of its tests only ``test_redis_available`` can apply. The others
are listed in NOT_APPLICABLE with the reason, and the README repeats the list.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import SCRIPTS

SDIST = "bruno-memory==0.1.5"
MEMBER = "bruno_memory-0.1.5/tests/unit/test_cache.py"

#: TestRedisCache tests that assert on calls into a mocked redis-py client.
NOT_APPLICABLE = {
    "test_connect": "asserts redis-py's ping() was called and reads the private _connected",
    "test_get_set": "asserts redis-py's setex() was called; feeds get() through a mocked client",
    "test_get_miss": "feeds get() through a mocked redis-py client",
    "test_delete": "asserts redis-py's delete() was called",
    "test_exists": "feeds exists() through a mocked redis-py client",
    "test_clear": "feeds scan() through a mocked redis-py client",
    "test_get_many": "feeds mget() through a mocked redis-py client",
    "test_set_many": "asserts a redis-py pipeline's execute() was called",
    "test_prefix_namespacing": "reads the key from redis-py's setex() call arguments",
}

@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("bruno-memory-sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", ":all:", SDIST, "--dest", str(where)],
        check=True, timeout=600,
    )
    (sdist,) = where.glob("bruno_memory-0.1.5.tar.gz")
    suite = where / "suite"
    suite.mkdir()
    with tarfile.open(sdist) as tar:
        source = tar.extractfile(MEMBER)
        assert source is not None, f"{MEMBER} missing from the sdist"
        (suite / "test_cache.py").write_bytes(source.read())
    shutil.copyfile(os.path.join(SCRIPTS, "reference_suite_conftest.py"), suite / "conftest.py")
    (suite / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    return suite


@pytest.fixture(scope="module")
def outcomes(suite_dir: Path) -> dict[str, str]:
    """Run the reference's test module once: {"Class::test": "passed"/"failed"/...}."""
    report = suite_dir / "report.xml"
    deselect = [f"--deselect=test_cache.py::TestRedisCache::{name}" for name in NOT_APPLICABLE]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(suite_dir), "-c", str(suite_dir / "pytest.ini"), f"--junitxml={report}",
         *deselect, "test_cache.py"],
        cwd=suite_dir, capture_output=True, text=True, timeout=600,
    )
    assert report.exists(), proc.stdout + proc.stderr
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = child.tag
        results[name] = status
    results["__output__"] = proc.stdout + proc.stderr
    return results


def _of_class(outcomes: dict[str, str], cls: str) -> dict[str, str]:
    return {k: v for k, v in outcomes.items() if k.startswith(cls + "::")}


@pytest.mark.parametrize(
    "cls, count",
    [("TestInMemoryCache", 14), ("TestMultiLevelCache", 9), ("TestCachePerformance", 3)],
)
def test_reference_class_passes_unchanged(outcomes, cls, count):
    tests = _of_class(outcomes, cls)
    assert len(tests) == count, (tests, outcomes["__output__"])
    failed = {k: v for k, v in tests.items() if v != "passed"}
    assert not failed, (failed, outcomes["__output__"])


def test_redis_cache_tests_that_apply_pass(outcomes):
    tests = _of_class(outcomes, "TestRedisCache")
    assert tests == {"TestRedisCache::test_redis_available": "passed"}, outcomes["__output__"]


def test_not_applicable_list_matches_the_reference(suite_dir):
    """Every test we leave out exists upstream, so the list cannot go stale silently."""
    source = (suite_dir / "test_cache.py").read_text()
    for name in NOT_APPLICABLE:
        assert f"async def {name}(self, mock_redis)" in source, name
