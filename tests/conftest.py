import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter. It must be chosen before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def chosen_backend(name: str):
    """Set the cell backend for a test, and back to the default after it."""
    import xlstm_hf

    xlstm_hf.set_kernel_backend(name)
    yield name
    xlstm_hf.set_kernel_backend(None)


@pytest.fixture
def triton_backend():
    """The Triton kernels chosen explicitly for the test (on the CPU, Triton's interpreter runs them)."""
    yield from chosen_backend("triton")


@pytest.fixture(params=["torch", "triton"])
def each_backend(request):
    """Each cell backend in turn; "triton" also runs the fused inference kernels (in the interpreter on the CPU)."""
    yield from chosen_backend(request.param)
