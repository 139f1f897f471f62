"""The sdist and a wheel build and install into a fresh venv (README "Install").

Also: the sdist alone builds (outside the repository, with build isolation, as a user's
`pip install` would: -Wall -Wextra, never -Werror), and a missing libhiredis-dev stops
the build with one message naming it, before any compiler error. (The release wheels,
one per supported Python and repaired by auditwheel, are `make test-wheel`'s.)
"""
import os
import re
import shutil
import subprocess
import tarfile
import sys
import venv

from tests.support import REPO, SCRIPTS

#: Imports the installed package from the venv's site-packages (argv[1]) and uses it.
SMOKE = os.path.join(SCRIPTS, "smoke_installed.py")


def test_sdist_and_wheel_install_into_a_fresh_venv(tmp_path, work_tree):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist),
                    str(work_tree)],
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
        out = subprocess.run([py, SMOKE, site], check=True, capture_output=True,
                             text=True, cwd=tmp_path).stdout
        assert out.startswith("ok 0.1.0")


def user_env(**extra: str) -> dict:
    """A user's environment: none of our build switches, nothing of this repository."""
    drop = ("PYTHONPATH", "LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC", "VIRTUAL_ENV", "CC",
            "CFLAGS", "LDSHARED", "CPATH", "C_INCLUDE_PATH")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("BRUNO_", "MAKE", "MFLAGS", "PYTEST_"))}
    env.update(extra)
    return env


def unpack(sdist, where):
    """The sdist's source tree, unpacked under `where` (outside the repository)."""
    with tarfile.open(sdist) as tar:  # (the "data" filter: 3.11.4 and later)
        tar.extractall(where, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (tree,) = [p for p in where.iterdir() if p.is_dir()]
    assert not str(tree).startswith(REPO + os.sep)
    return tree


def test_the_sdist_alone_builds_with_build_isolation(sdist, tmp_path):
    # On a machine with gcc, Python headers and libhiredis-dev: nothing else from this
    # repository than the sdist, the build requirements from PyPI, a user's environment.
    tree = unpack(sdist, tmp_path / "src")
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out),
                           str(tree)], capture_output=True, text=True, cwd=tmp_path, env=user_env(),
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    compiles = [line for line in log.splitlines() if re.search(r"\s-c\s\S*csrc/\w+\.c", line)]
    assert compiles, log
    for line in compiles:  # a user's build: every warning shown, none fatal
        assert " -Wall " in line and " -Wextra " in line and "-Werror" not in line, line
    (wheel,) = out.glob("*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
                   check=True, capture_output=True, text=True, env=user_env())
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    shutil.rmtree(tree)  # the installed package must not need its sources
    out = subprocess.run([py, SMOKE, site], check=True, capture_output=True,
                         text=True, cwd=tmp_path, env=user_env()).stdout
    assert out.startswith("ok 0.1.0")


def compiler_without_hiredis(where) -> str:
    """A gcc that sees every system header but hiredis's: a C compiler on a machine
    without libhiredis-dev. (-nostdinc, then gcc's own include path again, with a copy
    of each directory that holds hiredis/ made of links to everything else in it.)"""
    probe = subprocess.run(["gcc", "-E", "-Wp,-v", "-x", "c", os.devnull],
                           capture_output=True, text=True, check=True).stderr
    lines = probe.split("#include <...> search starts here:")[1].split("End of search list.")[0]
    dirs = [d.strip() for d in lines.splitlines() if d.strip()]
    assert "/usr/include" in dirs, probe
    args = []
    for i, d in enumerate(dirs):
        if os.path.isdir(os.path.join(d, "hiredis")):
            mirror = where / f"include{i}"
            mirror.mkdir()
            for entry in os.listdir(d):
                if entry != "hiredis":
                    os.symlink(os.path.join(d, entry), mirror / entry)
            d = str(mirror)
        args += ["-isystem", d]
    cc = where / "cc-without-hiredis"
    cc.write_text("#!/bin/sh\nexec gcc -nostdinc %s \"$@\"\n" % " ".join(args))
    cc.chmod(0o755)
    # It is a working compiler (standard headers and all), that cannot see hiredis.
    for header, works in (("stdio.h", True), ("pthread.h", True), ("hiredis/hiredis.h", False)):
        proc = subprocess.run([str(cc), "-fsyntax-only", "-x", "c", "-"],
                              input=f"#include <{header}>\n", capture_output=True, text=True)
        assert (proc.returncode == 0) == works, (header, proc.stderr)
    return str(cc)


def test_missing_hiredis_headers_stop_the_build_with_one_message(sdist, tmp_path):
    tree = unpack(sdist, tmp_path / "src")
    cc = compiler_without_hiredis(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation",
                           "--no-deps", "--disable-pip-version-check",
                           "-w", str(tmp_path / "out"), str(tree)],
                          capture_output=True, text=True, cwd=tmp_path, env=user_env(CC=cc),
                          timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log
    headline = ("error: hiredis/hiredis.h, the hiredis C headers, was not found: "
                "install the Debian package libhiredis-dev")
    assert log.count(headline) == 1, log
    before, after = log.split(headline)
    # No compiler error wall before it: nothing was compiled at all, and the compiler's
    # one complaint is quoted inside the message.
    for wall in ("fatal error", "No such file", "csrc/", "hiredis.h:", "error: command"):
        assert wall not in before, (wall, log)
    assert not re.search(r"\.[ch]:\d+(:\d+)?: (warning|error|note)", before), log
    assert "csrc/" not in after, log
    assert log.count("fatal error") == 1 and "said: " in after.split("fatal error")[0], log
