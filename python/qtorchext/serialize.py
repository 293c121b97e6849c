"""State dicts shared with C++ (``qat::save_state_dict`` / ``qat::load_state_dict``).

The file is what ``torch.save`` writes for a plain dict ``{name: tensor}``. (LibTorch's
unpickler cannot read the ``OrderedDict`` that ``module.state_dict()`` returns, so
``torch.save(module.state_dict(), path)`` files do not load in C++; this module writes the
plain dict.)
"""

from __future__ import annotations

import os

import torch

__all__ = ["load_state_dict", "save_state_dict"]


def save_state_dict(module: torch.nn.Module, path: str) -> None:
    """Writes module's parameters and buffers to ``path`` (via a temporary file and a rename,
    so an existing file is never left half written)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state_dict(module: torch.nn.Module, path: str, strict: bool = True):
    """Loads a state dict written by :func:`save_state_dict` or by C++'s
    ``qat::save_state_dict`` into ``module``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    # every converted layer's qparams checked before any is loaded: a bad file leaves the
    # module as it was
    from .nn.quantized import _QuantizedLayer, check_layer_state
    for name, mod in module.named_modules():
        if isinstance(mod, _QuantizedLayer):
            check_layer_state(mod, state, f"{name}." if name else "")
    return module.load_state_dict(state, strict=strict)
