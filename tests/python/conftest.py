import pytest
import torch

import qtorchext


@pytest.fixture(params=qtorchext.supported_cpu_capabilities())
def cpu_capability(request):
    """Runs a test once per CPU kernel set this machine supports."""
    previous = qtorchext.cpu_capability()
    qtorchext.set_cpu_capability(request.param)
    yield request.param
    qtorchext.set_cpu_capability(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
