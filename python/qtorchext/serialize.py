"""State dicts shared with C++ (``qat::save_state_dict`` / ``qat::load_state_dict``).

The file is what ``torch.save`` writes for a plain dict ``{name: tensor}``. (LibTorch's
unpickler cannot read the ``OrderedDict`` that ``module.state_dict()`` returns, so
``torch.save(module.state_dict(), path)`` files do not load in C++; this module writes the
plain dict.)
"""

from __future__ import annotations

import os
import zipfile

import torch

__all__ = ["load_state_dict", "save_state_dict"]


def save_state_dict(module: torch.nn.Module, path: str) -> None:
    """Writes module's parameters and buffers to ``path`` (via a temporary file and a rename,
    so an existing file is never left half written)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_state(path) -> dict:
    """The {name: tensor} dict in ``path``, or an error naming the path and what is wrong
    (instead of torch's bare EOFError / OSError or its advice to unpickle untrusted bytes)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_state_dict: no file {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"load_state_dict: {path} is not a complete PyTorch archive "
                         f"({os.path.getsize(path)} bytes; truncated, or not written by "
                         "torch.save / qtorchext.save_state_dict / qat::save_state_dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"load_state_dict: cannot read {path} as a dict of tensors: "
                         f"{first}") from err
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"load_state_dict: {path} holds a {type(state).__name__}, not a dict "
                         "of name -> tensor")
    return state


def load_state_dict(module: torch.nn.Module, path: str, strict: bool = True):
    """Loads a state dict written by :func:`save_state_dict` or by C++'s
    ``qat::save_state_dict`` into ``module``."""
    state = _read_state(path)
    # every converted layer's qparams checked before any is loaded: a bad file leaves the
    # module as it was
    from .nn.quantized import _QuantizedLayer, check_layer_state
    for name, mod in module.named_modules():
        if isinstance(mod, _QuantizedLayer):
            check_layer_state(mod, state, f"{name}." if name else "")
    return module.load_state_dict(state, strict=strict)
