"""Loads the compiled part of qtorchext and says exactly what to do if it cannot."""

from __future__ import annotations

import importlib
import os

import torch

_BUILD_HINT = (
    "Build it with `make build` in the qtorchext checkout (or `pip install .` there), "
    "using the same Python and torch you import qtorchext with."
)


def load():
    """Imports qtorchext._C (which registers torch.ops.qtorchext) and checks it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        native = importlib.import_module("qtorchext._C")
    except ImportError as err:
        built = [f for f in os.listdir(here) if f.startswith("_C") and f.endswith(".so")]
        if not built:
            raise ImportError(
                f"qtorchext's compiled module is missing from {here}. {_BUILD_HINT}"
            ) from err
        raise ImportError(
            f"qtorchext's compiled module {built[0]} in {here} failed to load ({err}). It was "
            f"probably built against another torch than the installed {torch.__version__}. "
            f"{_BUILD_HINT}"
        ) from err

    running = torch.__version__.split("+")[0]
    if native.torch_version != running:
        raise ImportError(
            f"qtorchext was built against torch {native.torch_version}, but torch {running} "
            f"is installed. {_BUILD_HINT}"
        )
    if not hasattr(torch.ops.qtorchext, "fake_quantize_per_tensor_affine"):
        raise ImportError(
            "qtorchext._C loaded but registered no ops in torch.ops.qtorchext; the library "
            f"in {here} is incomplete. {_BUILD_HINT}"
        )
    return native
