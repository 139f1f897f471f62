"""Build script for the bruno_memory_c C extension.

Environment switches (used by the Makefile):
  BRUNO_WERROR=1 warnings are errors (our own builds; a user's `pip install` never
                 fails on a compiler warning, so a plain build leaves it off)
  BRUNO_ASAN=1   AddressSanitizer build (-fsanitize=address, -O1 -g)
  BRUNO_DEBUG=1  consistency checks of every data structure after each mutation
"""
import glob
import os

from setuptools import Extension, setup

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

core = Extension(
    "bruno_memory_c._core",
    sources=sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc"],
    libraries=["hiredis"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(ext_modules=[core])
