"""The package imports from anywhere, and a missing build gives an actionable error."""

import os
import shutil
import subprocess
import sys

import qtorchext


def test_import_from_another_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import qtorchext; print(qtorchext.__version__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == qtorchext.__version__


def test_missing_build_error_says_what_to_run(tmp_path):
    pkg_src = os.path.dirname(qtorchext.__file__)
    pkg = tmp_path / "qtorchext"
    shutil.copytree(pkg_src, pkg, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    out = subprocess.run(
        [sys.executable, "-c", "import qtorchext"], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode != 0
    assert "compiled module is missing" in out.stderr
    assert "make build" in out.stderr


def test_build_info():
    assert qtorchext._C.torch_version == __import__("torch").__version__.split("+")[0]
    assert qtorchext.cpu_capability() in qtorchext.supported_cpu_capabilities()


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_kernel_sets_follow_the_cpu_flags_and_the_environment(tmp_path):
    flags = _cpu_flags()
    supported = qtorchext.supported_cpu_capabilities()
    if flags:  # Linux: what the CPU has decides what is offered, best last
        want = ["default"]
        if {"avx2", "fma", "f16c"} <= flags:
            want.append("avx2")
            if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
                want.append("avx2_vnni")
            if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
                want.append("avx512")
                if "avx512_vnni" in flags:
                    want.append("avx512_vnni")
                    if {"amx_tile", "amx_bf16", "avx512_bf16"} <= flags:
                        want.append("avx512_amx")
        assert supported == want
    assert qtorchext.cpu_capability() == supported[-1]
    # QTORCHEXT_CPU_CAPABILITY forces each set from the start; an unknown name falls
    # back to the best one
    for name in supported + ["no_such_set"]:
        out = subprocess.run(
            [sys.executable, "-c", "import qtorchext; print(qtorchext.cpu_capability())"],
            cwd=tmp_path, capture_output=True, text=True, check=True,
            env={**os.environ, "QTORCHEXT_CPU_CAPABILITY": name})
        assert out.stdout.strip() == (name if name in supported else supported[-1])


def test_import_leaves_torchs_exception_types_alone(tmp_path):
    # qtorchext._C translates its own errors only: torch.ops keeps raising IndexError /
    # NotImplementedError / ... after the import (a global pybind11 translator turned
    # them all into RuntimeError)
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "import qtorchext\n"
        "try:\n"
        "    torch.ops.aten.select.int(torch.zeros(2), 0, 5)\n"
        "except IndexError:\n"
        "    pass\n"
        "q = torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)\n"
        "try:\n"
        "    torch.ops.aten.exp.default(q)\n"
        "except NotImplementedError:\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr
