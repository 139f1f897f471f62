"""`make test-wheel`: the release wheels in dist/ work on their own.

Run by `make test-wheel` (after `make wheel`), never by `make test`: this directory is
not in pytest's testpaths. For each supported interpreter, its wheel goes into a fresh
venv of that interpreter (no index: the wheel needs nothing else), and then:

* the wheel is a manylinux wheel with libhiredis, libssl and libcrypto inside
  (bruno_memory_c.libs/, exactly those three), and `auditwheel show` finds no external
  library it would still need;
* `ldd` on the installed extension resolves each of them to its copy there, and never
  to the system's /usr/lib/x86_64-linux-gnu/lib{hiredis,ssl,crypto}.so*;
* importing it (under LD_DEBUG=libs,bindings and LD_BIND_NOW) maps exactly those three
  copies, asks the dynamic loader for no other, and binds every symbol the extension
  takes from them to those copies, although Python's own ssl and hashlib have mapped
  the system's OpenSSL first; /proc/self/maps shows the copies (and no other hiredis)
  after a run of examples/demo.py and after a set/get over TLS;
* examples/demo.py runs with that venv's python, from a directory outside the
  repository, against the venv's bruno_memory_c (not the in-place build);
* over TLS, against bruno_memory_c.testing.RedisServer(tls=True): a set/get with the
  server's CA (``tls_kwargs``), the same with only SSL_CERT_FILE naming it, and without
  either a verification failure that names the bundled OpenSSL's default CA file.

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
NAME = "bruno_memory_c"
# The libraries auditwheel copies into bruno_memory_c.libs/ (by their name's stem), and
# where the system's copies live (never to be used by the installed extension).
BUNDLED = ("libhiredis", "libssl", "libcrypto")
SYSTEM_LIBS = "/usr/lib/x86_64-linux-gnu/"
# The CA file the bundled (Debian) libcrypto looks for by default (its OPENSSLDIR).
BUNDLED_CA_FILE = "/usr/lib/ssl/cert.pem"


def stem(filename: str) -> str | None:
    """Which of BUNDLED a library file name is ("libssl-1a2b3c4d.so.3", "libssl.so.3": "libssl"),
    or None."""
    m = re.match(r"(lib[a-z]+)(?:-[0-9a-f]{8})?\.so", os.path.basename(filename))
    return m.group(1) if m and m.group(1) in BUNDLED else None


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run `cmd`; fail the test with its whole output when it fails."""
    kwargs.setdefault("timeout", 240)
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def find_python(version: str) -> str:
    return run([os.path.join(ROOT, "tools", "find-python"), version]).stdout.strip()


def clean_env(**extra: str) -> dict:
    """The environment minus anything that could bring in the repository or other libraries
    (or other CA certificates: the TLS check wants OpenSSL's defaults)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "LD_LIBRARY_PATH", "LD_PRELOAD",
            "LD_DEBUG", "LD_BIND_NOW", "ASAN_OPTIONS", "PYTHONMALLOC", "VIRTUAL_ENV",
            "REDIS_URL", "SSL_CERT_FILE", "SSL_CERT_DIR")
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


# What a script prints as "mapped:": every file of BUNDLED's names the process has mapped.
MAPPED = """
def mapped():
    with open("/proc/self/maps") as f:
        files = {line.split()[-1] for line in f if line.split()[-1].startswith("/")}
    return sorted(os.path.realpath(p) for p in files
                  if os.path.basename(p).startswith(("libhiredis", "libssl", "libcrypto")))
"""

# Maps Python's own OpenSSL first (ssl, hashlib: the system's), then imports the package
# between two markers on stderr (where LD_DEBUG writes too): what the import added.
MAPS_CHECK = """
import os, sys
""" + MAPPED + """
import asyncio, hashlib, ssl
before = mapped()
print("== import", file=sys.stderr, flush=True)
import bruno_memory_c, bruno_memory_c._core
print("== imported", file=sys.stderr, flush=True)
print("package:", os.path.realpath(bruno_memory_c.__file__))
print("core:", os.path.realpath(bruno_memory_c._core.__file__))
print("added:", " ".join(p for p in mapped() if p not in before))
"""

# examples/demo.py under the venv's interpreter, then the listing.
DEMO_RUNNER = """
import os, runpy, sys
""" + MAPPED + """
import bruno_memory_c
assert os.path.realpath(bruno_memory_c.__file__).startswith(sys.argv[2]), bruno_memory_c.__file__
runpy.run_path(sys.argv[1], run_name="__main__")
print("mapped:", " ".join(mapped()))
"""

# A set/get over TLS with a throwaway RedisServer(tls=True): with its CA (tls_kwargs),
# then with no CA (verification fails: the message names the default CA file), then
# with SSL_CERT_FILE naming its CA (read when a cache is made).
TLS_SMOKE = """
import asyncio, os, sys
""" + MAPPED + """
import bruno_memory_c
from bruno_memory_c import CacheError, RedisCache
from bruno_memory_c.testing import RedisServer
assert os.path.realpath(bruno_memory_c.__file__).startswith(sys.argv[1]), bruno_memory_c.__file__

async def round_trip(server, **kw):
    cache = RedisCache(host="127.0.0.1", port=server.port, prefix="wheel-tls:",
                       connect_timeout=5.0, socket_timeout=10.0, **kw)
    assert cache.ssl is True
    try:
        await cache.set("k", {"over": "tls", "n": 1})
        assert await cache.get("k") == {"over": "tls", "n": 1}
        return "ok"
    except CacheError as e:
        return str(e)
    finally:
        await cache.disconnect()

with RedisServer(tls=True) as server:
    print("tls_kwargs:", asyncio.run(round_trip(server, **server.tls_kwargs)))
    print("no_ca:", asyncio.run(round_trip(server, ssl=True)))
    os.environ["SSL_CERT_FILE"] = server.tls.ca_file
    print("ssl_cert_file:", asyncio.run(round_trip(server, ssl=True)))
print("mapped:", " ".join(mapped()))
"""


def field(out: str, name: str) -> str:
    values = [line[len(name) + 2:] for line in out.splitlines() if line.startswith(name + ": ")]
    assert len(values) == 1, (name, out)
    return values[0]


def ld_debug_between(stderr: str, start: str, end: str) -> str:
    """The lines of `stderr` between the marker lines `start` and `end`."""
    lines = stderr.splitlines()
    return "\n".join(lines[lines.index(start) + 1:lines.index(end)])


@pytest.mark.parametrize("version", SUPPORTED)
def test_wheel_carries_its_libraries_and_runs_the_demo_and_tls(version, tmp_path):
    wheel = the_wheel(version)

    # The wheel itself: hiredis and OpenSSL inside, nothing external left (auditwheel's view).
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    bundled = sorted(os.path.basename(n) for n in names
                     if n.startswith(f"{NAME}.libs/") and not n.endswith("/"))
    assert sorted(str(stem(b)) for b in bundled) == sorted(BUNDLED), names
    for b in bundled:
        assert re.fullmatch(r"lib[a-z]+-[0-9a-f]{8}\.so[.0-9]*", b), b
    by_stem = {stem(b): b for b in bundled}
    assert "Requires-Python: >=3.11" in metadata
    assert f"Classifier: Programming Language :: Python :: {version}" in metadata
    plat = re.search(r"-(manylinux_2_\d+_x86_64)\.whl$", wheel).group(1)
    show = run([os.path.join(TOOLS, "bin", "auditwheel"), "show", wheel],
               env=clean_env(PATH=os.path.join(TOOLS, "bin") + os.pathsep + os.environ["PATH"]))
    text = " ".join((show.stdout + show.stderr).split())
    assert f'consistent with the following platform tag: "{plat}"' in text, text
    assert "external shared libraries are required" not in text, text
    for lib in BUNDLED:
        assert f"{lib}.so" not in text, text

    # Installed into a fresh venv: the extension needs the bundled names, and ldd
    # resolves each to the copy in bruno_memory_c.libs/.
    py, site = installed_venv(version, tmp_path)
    libs = os.path.join(site, f"{NAME}.libs")
    copies = sorted(os.path.join(libs, b) for b in bundled)
    assert sorted(os.listdir(libs)) == bundled
    cores = glob.glob(os.path.join(site, NAME, "_core*.so"))
    assert len(cores) == 1, cores
    needed = run(["readelf", "-d", cores[0]]).stdout
    for lib, b in by_stem.items():
        assert f"Shared library: [{b}]" in needed, needed
        assert f"Shared library: [{lib}.so" not in needed, needed
    ldd = run(["ldd", cores[0]], env=clean_env()).stdout
    print(ldd)
    resolved = {}
    for line in ldd.splitlines():
        m = re.fullmatch(r"(\S+) => (\S+) \(0x[0-9a-f]+\)", line.strip())
        if m and stem(m.group(1)):
            assert stem(m.group(1)) not in resolved, ldd
            resolved[stem(m.group(1))] = (m.group(1), os.path.realpath(m.group(2)))
    assert resolved == {lib: (b, os.path.join(libs, b)) for lib, b in by_stem.items()}, ldd
    assert not any(f"{SYSTEM_LIBS}{lib}" in ldd for lib in BUNDLED), ldd

    # Imported from outside the repository, after Python's ssl and hashlib have mapped
    # the system's OpenSSL: the import maps exactly the three copies, the dynamic loader
    # looks for nothing else of theirs, and every symbol the extension takes from them
    # is bound to them (LD_BIND_NOW: all of them at load).
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = run([py, "-c", MAPS_CHECK], cwd=str(work),
               env=clean_env(LD_DEBUG="libs,bindings", LD_BIND_NOW="1"))
    assert field(proc.stdout, "package").startswith(site + os.sep)
    assert field(proc.stdout, "core") == cores[0]
    assert field(proc.stdout, "added").split() == copies
    debug = ld_debug_between(proc.stderr, "== import", "== imported")
    lookups = sorted(re.findall(r"find library=(\S+)", debug))
    assert [x for x in lookups if stem(x)] == bundled, lookups
    tried = [os.path.realpath(p) for p in re.findall(r"trying file=(\S+)", debug)]
    # (the loader tries the hwcaps subdirectories of the RUNPATH first, then the file)
    tried = [p for p in tried if stem(p)]
    assert tried and all(p.startswith(libs + os.sep) for p in tried), tried
    assert sorted(set(tried) & set(copies)) == copies, tried
    inits = re.findall(r"calling init: (\S+)", debug)
    assert sorted(os.path.realpath(p) for p in inits if stem(p)) == copies, inits
    bindings = re.findall(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]", proc.stderr)
    targets = {os.path.realpath(t) for f, t in bindings
               if stem(t) and os.path.realpath(f) == cores[0]}
    assert targets == set(copies), targets   # each copy used, nothing else of theirs

    # The demo, copied outside the repository, with its own throwaway redis-server.
    demo = work / "demo.py"
    shutil.copy(os.path.join(ROOT, "examples", "demo.py"), demo)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = run([py, "-c", DEMO_RUNNER, str(demo), site + os.sep], cwd=str(work),
               env=clean_env(TMPDIR=str(tmpdir)), timeout=120)
    assert "(started a throwaway redis-server on port" in proc.stdout, proc.stdout
    assert "demo: all examples ran" in proc.stdout, proc.stdout
    mapped = field(proc.stdout, "mapped").split()
    assert set(copies) <= set(mapped), mapped
    # (Python's ssl maps the system's libssl and libcrypto too: no other hiredis, though)
    hiredis = [p for p in mapped if stem(p) == "libhiredis"]
    assert hiredis == [os.path.join(libs, by_stem["libhiredis"])], mapped
    assert list(tmpdir.iterdir()) == []  # the throwaway server cleaned up

    # TLS with a throwaway TLS server (its certificates made by the openssl command).
    proc = run([py, "-c", TLS_SMOKE, site + os.sep], cwd=str(work),
               env=clean_env(TMPDIR=str(tmpdir)), timeout=120)
    assert field(proc.stdout, "tls_kwargs") == "ok", proc.stdout
    no_ca = field(proc.stdout, "no_ca")
    assert no_ca.startswith("Redis connection failed: SSL certificate verify failed: "), no_ca
    if os.path.isfile(BUNDLED_CA_FILE):  # (a Debian machine: the default file is there)
        assert f"(CA certificates: {BUNDLED_CA_FILE}; " in no_ca, no_ca
    assert field(proc.stdout, "ssl_cert_file") == "ok", proc.stdout
    assert set(copies) <= set(field(proc.stdout, "mapped").split()), proc.stdout
    assert list(tmpdir.iterdir()) == []


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
