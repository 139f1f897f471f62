"""Build script for the bruno_memory_c C extension.

Environment switches (used by the Makefile):
  BRUNO_WERROR=1 warnings are errors (our own builds; a user's `pip install` never
                 fails on a compiler warning, so a plain build leaves it off)
  BRUNO_ASAN=1   AddressSanitizer build (-fsanitize=address, -O1 -g)
  BRUNO_DEBUG=1  consistency checks of every data structure after each mutation

Before compiling, the build checks its dependencies with the compiler it is about to
use (tiny test programs): the C compiler itself, the building interpreter's headers
(Python.h) and hiredis (hiredis/hiredis.h, and that -lhiredis links). When one is
missing it stops with one message naming the package to install, instead of a page of
compiler errors.
"""
import glob
import os
import shutil
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.errors import PlatformError
except ImportError:  # older setuptools (the build requires >= 77, which has it)
    from distutils.errors import DistutilsPlatformError as PlatformError

try:
    from setuptools.modified import newer_group
except ImportError:
    from distutils.dep_util import newer_group

cflags = ["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
ldflags = []
macros = []

if os.environ.get("BRUNO_WERROR"):
    cflags.append("-Werror")

if os.environ.get("BRUNO_ASAN"):
    cflags += ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    ldflags += ["-fsanitize=address"]
    macros.append(("BRUNO_DEBUG", "1"))
elif os.environ.get("BRUNO_DEBUG"):
    cflags += ["-O0", "-g"]
    macros.append(("BRUNO_DEBUG", "1"))
else:
    cflags += ["-O2"]


class MissingBuildDependency(PlatformError):
    """A build dependency is missing: setuptools prints "error: <message>" and exits 1."""


PROBE_COMPILER = "int bruno_probe(void) { return 0; }\n"
PROBE_PYTHON = ("#define PY_SSIZE_T_CLEAN\n#include <Python.h>\n"
                "int bruno_probe(void) { return PY_MAJOR_VERSION; }\n")
PROBE_HIREDIS = ("#include <hiredis/hiredis.h>\n"
                 "void *bruno_probe(void) { return redisReaderCreate(); }\n")
PROBE_OPENSSL = ("#include <openssl/ssl.h>\n"
                 "#if OPENSSL_VERSION_NUMBER < 0x10101000L\n#error OpenSSL 1.1.1 or later\n#endif\n"
                 "void *bruno_probe(void) { return SSL_CTX_new(TLS_client_method()); }\n")


def _first_error(failure):
    """The compiler's or linker's first error line (what the message quotes), else the
    reason setuptools gave (e.g. no such compiler)."""
    output, reason = failure
    for line in output.splitlines():
        line = line.strip()
        if ("error" in line.lower() or "cannot find" in line or "not found" in line
                or "No such file" in line):
            return line
    return reason


def _python_headers_hint(include_dir):
    version = "%d.%d" % sys.version_info[:2]
    executable = os.path.realpath(sys.executable)
    system_python = executable.startswith(("/usr/bin/", "/bin/"))
    if os.path.exists(os.path.join(include_dir, "Python.h")):
        return (f"the headers of Python {version} in {include_dir} do not compile "
                f"with this C compiler")
    if system_python and shutil.which("dpkg"):
        return (f"Python.h, the C headers of Python {version}, is missing "
                f"({include_dir}/Python.h): install the Debian package "
                f"python{version}-dev (sudo apt-get install python{version}-dev; "
                f"python3-dev for the system's default python3), then build again")
    return (f"Python.h, the C headers of Python {version}, is missing "
            f"({include_dir}/Python.h): this interpreter ({sys.executable}) was "
            f"installed without its headers. Install its development package "
            f"(Debian/Ubuntu: python{version}-dev, Fedora: python3-devel) or use an "
            f"interpreter that has them (pyenv and python.org builds do), then build again")


HIREDIS_HINT = ("install the Debian package libhiredis-dev "
                "(sudo apt-get install libhiredis-dev; Fedora: hiredis-devel, "
                "Alpine: hiredis-dev, macOS: brew install hiredis), then build again")


OPENSSL_HINT = ("install the Debian package libssl-dev "
                "(sudo apt-get install libssl-dev; Fedora: openssl-devel, "
                "Alpine: openssl-dev, macOS: brew install openssl), then build again")


class BuildExt(build_ext):
    """build_ext that checks the build dependencies before compiling anything."""

    def build_extensions(self):
        if any(self._needs_build(ext) for ext in self.extensions):
            self.check_build_dependencies(self.extensions[0])
        super().build_extensions()

    def _needs_build(self, ext):
        target = self.get_ext_fullpath(ext.name)
        return self.force or newer_group(list(ext.sources) + list(ext.depends), target, "newer")

    def check_build_dependencies(self, ext):
        compiler = str(getattr(self.compiler, "compiler_so", ["cc"])[0])
        compiler_name = os.path.basename(compiler)
        tmp = tempfile.mkdtemp(prefix="bruno-probe-")
        try:
            failure = self._probe(tmp, "compiler", PROBE_COMPILER, ext)
            if failure:
                raise MissingBuildDependency(
                    f"the C compiler ({compiler}) does not work: "
                    f"{_first_error(failure)}. Install one (Debian: sudo apt-get install "
                    f"build-essential), then build again")
            failure = self._probe(tmp, "python", PROBE_PYTHON, ext)
            if failure:
                include_dir = sysconfig.get_paths()["include"]
                raise MissingBuildDependency(
                    f"{_python_headers_hint(include_dir)}\n"
                    f"  ({compiler_name} said: {_first_error(failure)})")
            failure = self._probe(tmp, "hiredis", PROBE_HIREDIS, ext)
            if failure:
                raise MissingBuildDependency(
                    f"hiredis/hiredis.h, the hiredis C headers, was not found: {HIREDIS_HINT}\n"
                    f"  ({compiler_name} said: {_first_error(failure)})")
            failure = self._probe(tmp, "hiredis-link", PROBE_HIREDIS, ext, link=True)
            if failure:
                raise MissingBuildDependency(
                    f"-lhiredis does not link (libhiredis.so, the hiredis library for the "
                    f"linker, is missing): {HIREDIS_HINT}\n"
                    f"  (the linker said: {_first_error(failure)})")
            failure = self._probe(tmp, "openssl", PROBE_OPENSSL, ext)
            if failure:
                raise MissingBuildDependency(
                    f"openssl/ssl.h, the OpenSSL C headers (1.1.1 or later), was not found: "
                    f"{OPENSSL_HINT}\n  ({compiler_name} said: {_first_error(failure)})")
            failure = self._probe(tmp, "openssl-link", PROBE_OPENSSL, ext, link=True)
            if failure:
                raise MissingBuildDependency(
                    f"-lssl -lcrypto do not link (the OpenSSL libraries for the linker are "
                    f"missing): {OPENSSL_HINT}\n  (the linker said: {_first_error(failure)})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _probe(self, tmp, name, code, ext, link=False):
        """Compile (and link) `code` like the extension: None, or on failure
        (the compiler's output, setuptools' reason)."""
        source = os.path.join(tmp, f"probe_{name}.c")
        with open(source, "w") as f:
            f.write(code)
        # The probe asks "is it there", not "is it warning-free": no -Werror.
        args = [a for a in ext.extra_compile_args if a != "-Werror"]
        log_path = os.path.join(tmp, f"probe_{name}.log")
        with open(log_path, "w+b") as log:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(log.fileno(), 1)  # the compiler's output (and its command line)
            os.dup2(log.fileno(), 2)
            try:
                objects = self.compiler.compile(
                    [source], output_dir=os.path.join(tmp, name), include_dirs=ext.include_dirs,
                    extra_postargs=args)
                if link:
                    self.compiler.link_shared_object(
                        objects, os.path.join(tmp, f"probe_{name}.so"),
                        libraries=ext.libraries, library_dirs=ext.library_dirs,
                        extra_postargs=ext.extra_link_args)
                failure = None
            except Exception as e:
                # CompileError / LinkError, from whichever copy of distutils the compiler
                # object comes from (setuptools._distutils or the `distutils` alias)
                if type(e).__name__ not in ("CompileError", "LinkError"):
                    raise
                failure = str(e)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
            if failure is None:
                return None
            log.seek(0)
            output = log.read().decode(errors="replace")
        # The compiler's diagnostics, without setuptools' echo of the commands it ran.
        echoes = tuple(str(getattr(self.compiler, attr, [""])[0]) + " "
                       for attr in ("compiler_so", "linker_so"))
        output = "\n".join(line for line in output.splitlines() if not line.startswith(echoes))
        return output, failure


core = Extension(
    "bruno_memory_c._core",
    sources=sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc"],
    libraries=["hiredis", "ssl", "crypto"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(ext_modules=[core], cmdclass={"build_ext": BuildExt})
