"""Build for onnxprune: everything is declared in pyproject.toml except the native library.

`runtime_ops/src` is compiled into a plain shared library (an ONNX Runtime custom-op library,
not a Python extension module) that ``onnxprune.runtime_ops.library_path()`` hands to
``SessionOptions.register_custom_ops_library``. Only a C++17 compiler is needed: ONNX Runtime
is reached through the ``OrtApiBase*`` it passes in, so nothing links against it.

The vector kernels select their instruction sets per function at run time, so the build
deliberately never uses ``-march=native``: the wheel must run on any x86-64 CPU.

Because nothing in the library touches the Python C API, it is named ``_onnxprune_ops.so``
(no ``cpython-3XX`` ABI suffix) and the wheel is tagged ``py3-none-<platform>``: one wheel per
platform serves every Python version the package supports. It is still a platform wheel (x86-64
machine code), never a pure one. The sources are GCC/Clang C++17 (``__attribute__((target))``
dispatch), so there is no MSVC build.
"""

import os
import platform
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

LIBRARY = "onnxprune.runtime_ops._onnxprune_ops"  # runtime_ops/__init__.py's _LIBRARY_FILE, less ".so"
SOURCES = ["runtime_ops/src/ops.cc", "runtime_ops/src/kernels.cc", "runtime_ops/src/winograd.cc",
           "runtime_ops/src/sell.cc"]
HEADERS = ["runtime_ops/src/kernels.h", "runtime_ops/src/sell.h", "runtime_ops/src/winograd.h",
           "runtime_ops/src/winograd_rows.h", "runtime_ops/src/winograd_transforms.inc",
           "runtime_ops/src/ort_abi.h",
           "runtime_ops/src/conv_run.inc",
           "runtime_ops/src/conv_rows.inc",
           "runtime_ops/src/dw_rows.inc", "runtime_ops/src/dw_block.inc", "runtime_ops/src/dw_grid.inc",
           "runtime_ops/src/transpose_lanes.inc"]

# Test/CI-only: ONNXPRUNE_SANITIZE=1 builds with AddressSanitizer + UndefinedBehaviorSanitizer,
# every report fatal (runtime_ops/check_sanitized.sh builds that into build/sanitized/, never
# over the installed library). -fno-wrapv undoes Python's default -fwrapv, which would make
# signed overflow wrap silently instead of being reported.
SANITIZE_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                  "-fno-wrapv"]


class BuildCustomOpLibrary(build_ext):
    """build_ext for a library that is loaded by ONNX Runtime, never imported by Python."""

    def get_export_symbols(self, ext):
        # The default adds PyInit_<name>, which this library does not (and must not) define.
        return ["RegisterCustomOps"]

    def get_ext_filename(self, fullname):
        # No interpreter ABI suffix (.cpython-311-x86_64-linux-gnu): any Python loads the same
        # file. Called with the full dotted name and with its last part alone.
        name = super().get_ext_filename(fullname)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        if fullname.rpartition(".")[2] == LIBRARY.rpartition(".")[2] and name.endswith(suffix):
            name = name[: -len(suffix)] + ".so"
        return name

    def build_extensions(self):
        flags = ["-std=c++17", "-O3", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-fno-math-errno"]
        link = []
        if os.environ.get("ONNXPRUNE_SANITIZE") == "1":
            flags += SANITIZE_FLAGS  # later flags win: -O1 replaces -O3
            link = ["-fsanitize=address,undefined"]
        for ext in self.extensions:
            ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
            ext.extra_link_args = link + list(ext.extra_link_args or [])
        super().build_extensions()


class PlatformWheel(bdist_wheel):
    """Tag ``py3-none-<platform>``: platform-specific machine code, but no Python ABI in it."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


def _native_extensions():
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        sys.stderr.write(f"onnxprune: native sparse kernels are x86-64 only; skipping them on {machine}\n")
        return []
    # `depends` puts the headers in sdists and rebuilds when they change.
    return [Extension(LIBRARY, sources=SOURCES, depends=HEADERS, language="c++")]


setup(ext_modules=_native_extensions(), cmdclass={"build_ext": BuildCustomOpLibrary, "bdist_wheel": PlatformWheel})
