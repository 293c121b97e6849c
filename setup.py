"""Builds qtorchext with CMake: one libqtorchext plus the qtorchext._C module.

`pip install .` and `pip install -e .` both land here. The library is compiled
against the torch of the interpreter that runs pip -- also under pip's build
isolation, which would otherwise hide the installed torch -- so the extension
always matches the torch it will be imported with. Sources compile once per
interpreter, in ./build/pip-<python>-<hash> or in $QTORCHEXT_BUILD_DIR.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "include" / "qtorchext" / "version.h").read_text()
    return re.search(r'QTORCHEXT_VERSION_STRING "([^"]+)"', text).group(1)


def torch_env() -> dict:
    """An environment in which sys.executable sees the user's site-packages.

    pip's build isolation points PYTHONPATH at a private prefix and sets
    PYTHONNOUSERSITE; dropping both lets the interpreter find the torch the
    user has installed, which is the one qtorchext must be built against.
    """
    env = dict(os.environ)
    probe = [sys.executable, "-c", "import torch"]
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        return env
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONNOUSERSITE", None)
    if subprocess.run(probe, env=env, capture_output=True).returncode == 0:
        return env
    raise RuntimeError(
        f"{sys.executable} cannot import torch. qtorchext is compiled against the installed "
        "torch: install torch first (`make deps` installs torch==2.14.1), or build with "
        "`pip install --no-build-isolation .` from an environment that has it."
    )


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        # One build tree per interpreter (`make build` shares ./build on purpose).
        tag = hashlib.sha1(sys.executable.encode()).hexdigest()[:8]
        default = ROOT / "build" / f"pip-{sys.implementation.cache_tag}-{tag}"
        build_dir = Path(os.environ.get("QTORCHEXT_BUILD_DIR", default)).resolve()
        env = torch_env()
        configure = [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
        ]
        if not (build_dir / "CMakeCache.txt").exists():
            configure.append("-DCMAKE_BUILD_TYPE=Release")
            if shutil.which("ninja"):
                configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True, env=env)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--target", "qtorchext_python", "-j", jobs],
            check=True,
            env=env,
        )
        # Place _C and libqtorchext (found next to it through RPATH $ORIGIN)
        # where setuptools expects the extension: the build tree for a wheel,
        # the source package for an editable install.
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        built = build_dir / "python" / "qtorchext"
        module = next(built.glob("_C*.so"))
        for src, dst in ((module, target), (build_dir / "lib" / "libqtorchext.so", None)):
            dst = dst or target.parent / src.name
            if src.resolve() != dst:
                shutil.copy2(src, dst)


setup(
    version=read_version(),
    # setuptools' own scratch space, apart from the CMake trees under ./build.
    options={"build": {"build_base": "build/setuptools"}},
    ext_modules=[CMakeExtension("qtorchext._C")],
    cmdclass={"build_ext": CMakeBuild},
)
