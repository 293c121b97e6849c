"""qtorchext: quantization-aware training and post-training quantization for PyTorch.

The numerics are dispatcher ops in C++ (``torch.ops.qtorchext``) shared with the C++ API
(namespace ``qat``); this package exposes them with the names users know from
``torch`` and ``torch.ao.quantization``.
"""

from __future__ import annotations

from ._loader import load as _load

_C = _load()

from .functional import (  # noqa: E402
    binarize,
    fake_cast,
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_tensor_affine,
    fake_quantize_per_channel_affine,
    fake_quantize_per_group,
    fake_quantize_per_tensor_affine,
)

from . import observer  # noqa: E402
from .fake_quantize import (  # noqa: E402
    BinaryFakeQuantize,
    DynamicFakeQuantize,
    FakeQuantize,
    FakeQuantizeBase,
    FloatFakeQuantize,
    LearnableFakeQuantize,
)
from .observer import (  # noqa: E402
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    MSEObserver,
    PerChannelMinMaxObserver,
    PercentileObserver,
    PerTokenMinMaxObserver,
)
from .qconfig import QConfig, preset_names, qconfig  # noqa: E402
from .serialize import load_quantized, load_state_dict, save_state_dict  # noqa: E402
from . import nn  # noqa: E402
from .quantize import (  # noqa: E402
    convert,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    freeze_bn_stats,
    fuse_modules,
    prepare_qat,
    update_bn_stats,
)
from .distributed import set_observer_sync, sync_observers  # noqa: E402
from .onnx import compare_onnx, export_onnx, onnx_session, onnx_translations  # noqa: E402
from .gptq import GPTQ, GPTQOptions, gptq  # noqa: E402
from .mixed_precision import MixedPrecisionPlan, mixed_precision  # noqa: E402
from .smooth_quant import smooth_auto_alphas, smooth_factors, smooth_quant  # noqa: E402
from .ptq import calibrate, prepare, prepare_ptq, quantize_dynamic, quantize_static, report  # noqa: E402

__version__ = _C.__version__


def cpu_capability() -> str:
    """Instruction set of the CPU kernels in use ("default" or "avx2")."""
    return _C.cpu_capability()


def supported_cpu_capabilities() -> list[str]:
    """Instruction sets this CPU can run, best last."""
    return list(_C.supported_cpu_capabilities())


def set_cpu_capability(name: str) -> None:
    """Selects the CPU kernels (benchmarks and tests); QTORCHEXT_CPU_CAPABILITY sets the
    initial choice."""
    _C.set_cpu_capability(name)


__all__ = [
    "BinaryFakeQuantize",
    "DynamicFakeQuantize",
    "calibrate",
    "compare_onnx",
    "GPTQ",
    "GPTQOptions",
    "gptq",
    "MixedPrecisionPlan",
    "mixed_precision",
    "smooth_auto_alphas",
    "smooth_factors",
    "smooth_quant",
    "convert",
    "export_onnx",
    "onnx_session",
    "onnx_translations",
    "prepare",
    "prepare_ptq",
    "quantize_dynamic",
    "quantize_static",
    "report",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
    "freeze_bn_stats",
    "fuse_modules",
    "nn",
    "prepare_qat",
    "update_bn_stats",
    "FakeQuantize",
    "FakeQuantizeBase",
    "FloatFakeQuantize",
    "HistogramObserver",
    "LearnableFakeQuantize",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "PerChannelMinMaxObserver",
    "PerTokenMinMaxObserver",
    "PercentileObserver",
    "QConfig",
    "qconfig",
    "preset_names",
    "binarize",
    "cpu_capability",
    "fake_cast",
    "fake_quantize_learnable_per_channel_affine",
    "fake_quantize_learnable_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "fake_quantize_per_group",
    "fake_quantize_per_tensor_affine",
    "load_quantized",
    "load_state_dict",
    "save_state_dict",
    "set_cpu_capability",
    "set_observer_sync",
    "supported_cpu_capabilities",
    "sync_observers",
]
