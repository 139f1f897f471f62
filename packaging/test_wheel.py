"""`make test-wheel`: the release wheels in dist/ work on their own.

Run by `make test-wheel` (after `make wheel`), never by `make test`: this directory is
not in pytest's testpaths. For each supported interpreter, its wheel goes into a fresh
venv of that interpreter (no index: the wheel needs nothing else), and then:

* the wheel is a manylinux wheel with libhiredis inside (bruno_memory_c.libs/), and
  `auditwheel show` finds no external library it would still need;
* `ldd` on the installed extension resolves libhiredis to that copy, and never to the
  system's /usr/lib/x86_64-linux-gnu/libhiredis.so*;
* importing it (under LD_DEBUG=libs) loads that copy and asks the dynamic loader for no
  other hiredis; /proc/self/maps shows the same after a run of examples/demo.py;
* examples/demo.py runs with that venv's python, from a directory outside the
  repository, against the venv's bruno_memory_c (not the in-place build).

And Python 3.10 (below requires-python) is refused by pip itself, before any compiler.

Environment (set by the Makefile): BRUNO_TOOLS (the venv with auditwheel),
BRUNO_SUPPORTED ("3.11 3.12 3.13"), BRUNO_SDIST (dist/bruno_memory_c-<version>.tar.gz).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST = os.path.join(ROOT, "dist")
TOOLS = os.path.join(ROOT, os.environ.get("BRUNO_TOOLS", ".venv-tools"))
SUPPORTED = os.environ.get("BRUNO_SUPPORTED", "3.11 3.12 3.13").split()
SYSTEM_HIREDIS = "/usr/lib/x86_64-linux-gnu/libhiredis"
NAME = "bruno_memory_c"


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd`; fail the test with its whole output when it fails."""
    kwargs.setdefault("timeout", 240)
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def find_python(version: str) -> str:
    return run([os.path.join(ROOT, "tools", "find-python"), version]).stdout.strip()


def clean_env(**extra: str) -> dict:
    """The environment minus anything that could bring in the repository or other libraries."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "LD_LIBRARY_PATH", "LD_PRELOAD",
            "LD_DEBUG", "ASAN_OPTIONS", "PYTHONMALLOC", "VIRTUAL_ENV", "REDIS_URL")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("MAKE", "MFLAGS", "BRUNO_", "PYTEST_"))}
    env.update(extra)
    return env


def the_wheel(version: str) -> str:
    tag = "cp" + version.replace(".", "")
    found = glob.glob(os.path.join(DIST, f"{NAME}-*-{tag}-{tag}-*.whl"))
    assert len(found) == 1, f"want one {tag} wheel in {DIST}, found {found}"
    return found[0]


def the_sdist() -> str:
    sdist = os.environ.get("BRUNO_SDIST")
    if sdist:
        return os.path.join(ROOT, sdist)
    found = glob.glob(os.path.join(DIST, f"{NAME}-*.tar.gz"))
    assert len(found) == 1, f"want one sdist in {DIST}, found {found}"
    return found[0]


def test_dist_holds_the_sdist_and_one_repaired_wheel_per_supported_python():
    assert os.path.isfile(the_sdist())
    wheels = sorted(os.path.basename(w) for w in glob.glob(os.path.join(DIST, "*.whl")))
    tags = sorted("cp" + v.replace(".", "") for v in SUPPORTED)
    assert [w.split("-")[2] for w in wheels] == tags, wheels
    for w in wheels:
        assert re.fullmatch(rf"{NAME}-[^-]+-(cp3\d+)-\1-manylinux_2_\d+_x86_64\.whl", w), w


def installed_venv(version: str, where) -> tuple[str, str]:
    """A fresh venv of CPython `version` holding only the wheel: (python, site-packages)."""
    env_dir = where / f"venv-{version}"
    run([find_python(version), "-m", "venv", str(env_dir)], env=clean_env())
    py = str(env_dir / "bin" / "python")
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--no-deps", the_wheel(version)], env=clean_env(), cwd=str(where))
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               env=clean_env(), cwd=str(where)).stdout.strip()
    return py, os.path.realpath(site)


# Imports the package, then lists every hiredis the process has mapped.
MAPS_CHECK = """
import os, sys
import bruno_memory_c, bruno_memory_c._core
print("package:", os.path.realpath(bruno_memory_c.__file__))
print("core:", os.path.realpath(bruno_memory_c._core.__file__))
with open("/proc/self/maps") as f:
    mapped = sorted({line.split()[-1] for line in f
                     if "libhiredis" in os.path.basename(line.split()[-1])})
print("mapped:", " ".join(os.path.realpath(p) for p in mapped))
"""

# examples/demo.py under the venv's interpreter, then the same listing.
DEMO_RUNNER = """
import os, runpy, sys
import bruno_memory_c
assert os.path.realpath(bruno_memory_c.__file__).startswith(sys.argv[2]), bruno_memory_c.__file__
runpy.run_path(sys.argv[1], run_name="__main__")
with open("/proc/self/maps") as f:
    mapped = sorted({line.split()[-1] for line in f
                     if "libhiredis" in os.path.basename(line.split()[-1])})
print("mapped:", " ".join(os.path.realpath(p) for p in mapped))
"""


def field(out: str, name: str) -> str:
    values = [line[len(name) + 2:] for line in out.splitlines() if line.startswith(name + ": ")]
    assert len(values) == 1, (name, out)
    return values[0]


@pytest.mark.parametrize("version", SUPPORTED)
def test_wheel_carries_its_hiredis_and_runs_the_demo(version, tmp_path):
    wheel = the_wheel(version)

    # The wheel itself: libhiredis inside, nothing external left (auditwheel's view).
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    bundled = [n for n in names if n.startswith(f"{NAME}.libs/libhiredis")]
    assert len(bundled) == 1, names
    bundled_name = os.path.basename(bundled[0])
    assert re.fullmatch(r"libhiredis-[0-9a-f]{8}\.so[.0-9]*", bundled_name), bundled_name
    assert "Requires-Python: >=3.11" in metadata
    assert f"Classifier: Programming Language :: Python :: {version}" in metadata
    plat = re.search(r"-(manylinux_2_\d+_x86_64)\.whl$", wheel).group(1)
    show = run([os.path.join(TOOLS, "bin", "auditwheel"), "show", wheel],
               env=clean_env(PATH=os.path.join(TOOLS, "bin") + os.pathsep + os.environ["PATH"]))
    text = " ".join((show.stdout + show.stderr).split())
    assert f'consistent with the following platform tag: "{plat}"' in text, text
    assert "external shared libraries are required" not in text, text
    assert "libhiredis.so" not in text, text

    # Installed into a fresh venv: ldd resolves hiredis to the bundled copy.
    py, site = installed_venv(version, tmp_path)
    libs = os.path.join(site, f"{NAME}.libs")
    assert os.listdir(libs) == [bundled_name]
    cores = glob.glob(os.path.join(site, NAME, "_core*.so"))
    assert len(cores) == 1, cores
    needed = run(["readelf", "-d", cores[0]]).stdout
    assert f"Shared library: [{bundled_name}]" in needed, needed
    assert "Shared library: [libhiredis.so" not in needed, needed
    ldd = run(["ldd", cores[0]], env=clean_env()).stdout
    print(ldd)
    lines = [line.strip() for line in ldd.splitlines() if "libhiredis" in line.split()[0]]
    assert len(lines) == 1, ldd
    m = re.fullmatch(r"(\S+) => (\S+) \(0x[0-9a-f]+\)", lines[0])
    assert m and m.group(1) == bundled_name, lines
    assert os.path.realpath(m.group(2)) == os.path.join(libs, bundled_name), lines
    assert SYSTEM_HIREDIS not in ldd, ldd

    # Imported from outside the repository: the venv's package, which maps only its
    # own hiredis; the dynamic loader never even looks for the system's.
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = run([py, "-c", MAPS_CHECK], cwd=str(work), env=clean_env(LD_DEBUG="libs"))
    assert field(proc.stdout, "package").startswith(site + os.sep)
    assert field(proc.stdout, "core") == cores[0]
    assert field(proc.stdout, "mapped") == os.path.join(libs, bundled_name)
    lookups = re.findall(r"find library=(libhiredis\S*)", proc.stderr)
    assert lookups == [bundled_name], lookups
    tried = [os.path.realpath(p)
             for p in re.findall(r"trying file=(\S*/libhiredis[^/\s]*)", proc.stderr)]
    # (the loader tries the hwcaps subdirectories of the RUNPATH first, then the file)
    assert tried and all(p.startswith(libs + os.sep) for p in tried), tried
    assert tried[-1] == os.path.join(libs, bundled_name), tried
    inits = re.findall(r"calling init: (\S*/libhiredis[^/\s]*)", proc.stderr)
    assert [os.path.realpath(p) for p in inits] == [os.path.join(libs, bundled_name)], inits
    assert SYSTEM_HIREDIS not in proc.stderr

    # The demo, copied outside the repository, with its own throwaway redis-server.
    demo = work / "demo.py"
    shutil.copy(os.path.join(ROOT, "examples", "demo.py"), demo)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = run([py, "-c", DEMO_RUNNER, str(demo), site + os.sep], cwd=str(work),
               env=clean_env(TMPDIR=str(tmpdir)), timeout=120)
    assert "(started a throwaway redis-server on port" in proc.stdout, proc.stdout
    assert "demo: all examples ran" in proc.stdout, proc.stdout
    assert field(proc.stdout, "mapped") == os.path.join(libs, bundled_name)
    assert list(tmpdir.iterdir()) == []  # the throwaway server cleaned up


def test_python_3_10_is_refused_by_pip_not_by_a_compiler(tmp_path):
    env_dir = tmp_path / "venv-3.10"
    run([find_python("3.10"), "-m", "venv", str(env_dir)], env=clean_env())
    py = str(env_dir / "bin" / "python")
    sdist = the_sdist()
    # The sdist, as a file and as an unpacked source tree (`pip install .`).
    src = tmp_path / "src"
    with tarfile.open(sdist) as tar:  # (the "data" filter: 3.11.4 and later)
        tar.extractall(src, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (tree,) = src.iterdir()
    for target, cwd in ((sdist, tmp_path), (".", tree)):
        proc = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check",
                               "--no-deps", target], cwd=str(cwd), env=clean_env(),
                              capture_output=True, text=True, timeout=240)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        assert re.search(r"requires a different Python: 3\.10\.\d+ not in '>=3\.11'", out), out
        for compiler_trace in ("gcc", "Building wheel", "csrc/", "error: command"):
            assert compiler_trace not in out, out
    # And a wheel of a supported version is not one for 3.10.
    wheel = the_wheel(SUPPORTED[0])
    proc = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check",
                           "--no-index", "--no-deps", wheel], cwd=str(tmp_path),
                          env=clean_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "is not a supported wheel on this platform" in proc.stderr, proc.stderr
