"""The fused sLSTM kernel against the float64 recurrent reference (Triton's interpreter on the CPU, the GPU where
there is one), and the xLSTM[a:b] model on the Triton kernels against the model on the PyTorch reference."""

import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

import xlstm_hf  # noqa: E402
from helpers import random_ids  # noqa: E402
from test_xlstm_stack import VOCAB, tiny_stack  # noqa: E402
from xlstm_hf.kernels import backend  # noqa: E402
from xlstm_hf.kernels.slstm_torch import slstm_recurrent_sequence  # noqa: E402
from xlstm_hf.kernels.slstm_triton import slstm_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(B, S, NH, DH, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    gates, R = 2 * rand(B, S, 4, NH, DH), 0.3 * rand(NH, DH, 4, DH)
    state = (rand(B, NH, DH), rand(B, NH, DH), rand(B, NH, DH).abs() + 0.5, rand(B, NH, DH))
    for s in state[:3]:
        s[0] = 0  # row 0 starts fresh (n = 0)
    mask = torch.rand(B, S, generator=gen) > 0.3
    return gates, R, state, mask


@pytest.mark.parametrize("B, S, NH, DH, dtype, tol", [
    (3, 9, 2, 8, torch.float32, 1e-5),      # a head narrower than a tile
    (2, 6, 3, 20, torch.float32, 1e-5),     # not a power of two
    (20, 5, 2, 16, torch.float16, 2e-3),    # two blocks of batch rows
])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("resident", [True, False])
def test_kernel_equals_the_float64_reference(B, S, NH, DH, dtype, tol, with_state, resident):
    gates, R, state, mask = make_inputs(B, S, NH, DH)
    gates = gates.to(dtype).double()  # the reference sees the inputs the kernel sees
    state = state if with_state else None
    for row_mask in (None, mask):
        h_ref, final_ref = slstm_recurrent_sequence(gates, R, state, row_mask)
        to = lambda x: x.to(DEVICE)  # noqa: E731
        h, final = slstm_triton(to(gates.to(dtype)), to(R.float()),
                                None if state is None else tuple(to(s.float()) for s in state),
                                None if row_mask is None else to(row_mask), resident=resident)
        assert h.dtype == dtype and h.shape == h_ref.shape and all(s.dtype == torch.float32 for s in final)
        assert (h.double().cpu() - h_ref).abs().max() < tol
        for ours, ref in zip(final, final_ref):
            assert ((ours.double().cpu() - ref).abs() / ref.abs().clamp_min(1)).max() < tol


@pytest.fixture
def triton_backend():
    xlstm_hf.set_kernel_backend("triton")  # on the CPU: the interpreter (TRITON_INTERPRET=1, tests/conftest.py)
    backend._decide.cache_clear()
    yield
    xlstm_hf.set_kernel_backend(None)
    backend._decide.cache_clear()


def test_the_model_on_the_triton_kernels_equals_the_reference(triton_backend):
    model = tiny_stack().to(DEVICE)
    ids = random_ids(2, 20, vocab=VOCAB).to(DEVICE)
    with torch.no_grad():
        xlstm_hf.set_kernel_backend("torch")
        reference = model(ids).logits
        xlstm_hf.set_kernel_backend("triton")
        assert model.xlstm_block_stack.blocks[0].xlstm.mlstm_cell.outnorm.weight.device.type == DEVICE
        assert backend.resolve_backend(ids.device) == "triton"
        out = model(ids[:, :14])
        assert (out.logits - reference[:, :14]).abs().max() < 1e-4
        for t in range(14, 20):  # the fused steps, updating the cache in place
            step = model(ids[:, t : t + 1], cache=out.cache)
            assert (step.logits[:, 0] - reference[:, t]).abs().max() < 1e-4


COMPILE_JOBS = [  # (kernel, head width, data dtype, warps): the widest resident heads, and paper-sized streamed ones
    ("_slstm_forward", 64, "fp32", 8),
    ("_slstm_forward", 128, "bf16", 8),
    ("_slstm_forward_streamed", 192, "fp32", 4),
    ("_slstm_forward_streamed", 512, "bf16", 4),
]
SM90_SHARED_MEMORY = 232448  # bytes a block may use on sm_90


def compile_for_sm90() -> None:
    from triton.backends.compiler import GPUTarget

    from xlstm_hf.kernels import slstm_triton

    for name, head_dim, dtype, warps in COMPILE_JOBS:
        kernel = getattr(slstm_triton, name)
        data = f"*{dtype}"
        signature = {"GX": data, "R": data, "MASK": "*i8", "OUT": data, "B": "i32", "S": "i32"}
        constexprs = dict(NH=4, DH=head_dim, BB=16, HAS_MASK=True, IEEE=dtype == "fp32")
        if name == "_slstm_forward":
            states = ("H0", "C0", "N0", "M0", "HT", "CT", "NT", "MT")
            constexprs["BD"] = head_dim
        else:
            states = ("H0", "CT", "NT", "MT")
            constexprs["BE"] = 64
        signature.update({state: "*fp32" for state in states})
        signature.update({constant: "constexpr" for constant in constexprs})
        source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        assert len(compiled.asm["cubin"]) > 0 and compiled.metadata.shared <= SM90_SHARED_MEMORY, compiled.metadata
        print(f"{name} DH={head_dim} {dtype}: {compiled.metadata.shared} bytes of shared memory, sm_90 cubin")


def test_the_kernels_compile_for_sm90_within_its_shared_memory():
    # In a process of its own: this one may run the kernels in Triton's interpreter, which compiles nothing.
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("sm_90 cubin") == len(COMPILE_JOBS)


if __name__ == "__main__":
    compile_for_sm90()
