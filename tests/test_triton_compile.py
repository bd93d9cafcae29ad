"""Every Triton kernel compiles for Hopper (sm_90) with the installed Triton, ahead of time, without a GPU.

CI installs the newest Triton from PyPI (3.9 removed block pointers; the kernels use plain pointer arithmetic);
the GPU image's Triton 3.6 compiles them at run time in the device-machine tests.
"""

import inspect
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")
GPUTarget = pytest.importorskip("triton.backends.compiler").GPUTarget

from xlstm_hf.kernels import decode_triton, elementwise_triton, mlstm_triton, slstm_triton  # noqa: E402

# The pointers to the model's data (bf16 in the 7B), per module; the others (states, gates, statistics) are fp32.
DATA_POINTERS = {
    mlstm_triton: {"Q", "K", "V", "H", "DH", "DQ", "DK", "DV_out", "C_states", "DC_states", "F_in", "I_in", "O", "W"},
    elementwise_triton: {"X", "Y", "RES", "W", "OUT", "SUM", "O", "G", "Z", "I", "F", "I_OUT", "F_OUT"},
    slstm_triton: {"GX", "R", "OUT", "DOUT"},
    decode_triton: {"X", "W", "BIAS", "Y", "RES"},
}
INTEGERS = {"B", "S", "NC", "S_pad"}  # capitalised, yet sizes rather than tensors
FLOATS = {"scale", "eps", "cap", "norm_eps"}
SM90_SHARED_MEMORY = 232448  # bytes a block may use on sm_90


def slstm_job(name: str, head_dim: int, data: str, warps: int, stages: int) -> tuple:
    """An sLSTM kernel as launched: the widest resident heads, or paper-sized streamed ones."""
    constexprs = dict(NH=4, DH=head_dim, BB=16, HAS_MASK=True, IEEE=data == "fp32")
    constexprs["BE" if "streamed" in name else "BD"] = 64 if "streamed" in name else head_dim
    if "forward" in name:
        constexprs["SAVE"] = True  # the training forward: also stores the state of every step
    return slstm_triton, name, constexprs, data, dict(num_warps=warps, num_stages=stages)


def mlstm_chunkwise_jobs(data: str) -> list[tuple]:
    """The chunkwise kernels at the 7B's head dims with the tiling the launches use for `data` inputs."""
    T = mlstm_triton.TILING.for_dtype(torch.float32 if data == "fp32" else torch.bfloat16)
    seven_b = dict(NH=8, L=128, DQK=256, DV=512, IEEE=data == "fp32")
    return [
        (mlstm_triton, "_fw_states", dict(seven_b, BK=T.state_bk, BV=T.state_bv, HAS_INITIAL=True), data,
         dict(num_warps=T.state_warps, num_stages=T.state_stages)),
        (mlstm_triton, "_fw_outputs", dict(seven_b, BT=T.out_bt, BK=T.out_bk, BV=T.out_bv), data,
         dict(num_warps=T.out_warps, num_stages=T.out_stages)),
        # inference's prefill: the head norm and output gate in the epilogue, where the tile covers v's dims
        *([(mlstm_triton, "_fw_outputs", dict(seven_b, BT=T.out_bt, BK=T.out_bk, BV=T.out_bv, SAVE=False, NORM=True),
            data, dict(num_warps=T.out_warps, num_stages=T.out_stages))] if T.out_bv >= seven_b["DV"] else []),
        (mlstm_triton, "_bw_states", dict(seven_b, BK=T.state_bk, BV=T.state_bv, HAS_FINAL_GRAD=True), data,
         dict(num_warps=T.bw_state_warps, num_stages=T.bw_state_stages)),
        *((mlstm_triton, name, dict(seven_b, BT=T.grad_bt, BK=T.grad_bk, BV=T.grad_bv), data,
           dict(num_warps=T.grad_warps, num_stages=T.grad_stages)) for name in ("_bw_dq", "_bw_dk", "_bw_dv")),
    ]


def decode_job(rows: int, outputs: int, epilogue: int) -> tuple:
    """The decode GEMV as launched for `rows` rows and `outputs` outputs of a 7B projection (epilogue 0: bias,
    1: residual, 2: gated)."""
    tiling = decode_triton.SKINNY_TILING
    bm, bn, bk, stages = tiling.launch(rows, outputs, epilogue == 2, 2)
    constexprs = dict(HAS_BIAS=epilogue == 0, EPILOGUE=epilogue, BM=bm, BN=bn, BK=bk, IEEE=False)
    return decode_triton, "_skinny_linear", constexprs, "bf16", dict(num_warps=tiling.warps, num_stages=stages)


# (module, kernel, constexprs, dtype of the data pointers, launch options)
JOBS = [
    (mlstm_triton, "_prepare_gates", dict(NH=8, L=128), "bf16", {}),
    (mlstm_triton, "_prepare_gates", dict(NH=8, L=128, HAS_CAP=True, HAS_MASK=True), "bf16", {}),
    *mlstm_chunkwise_jobs("bf16"),
    *mlstm_chunkwise_jobs("fp32"),  # a model loaded in float32 runs them at the 7B's head dims too
    (mlstm_triton, "_step", dict(NH=8, DQK=256, DV=512, BK=256, BV=64), "bf16", {}),
    (mlstm_triton, "_denominator_grads", dict(NH=8, D=512, BR=64, BD=128), "bf16", {}),
    (mlstm_triton, "_gate_grads", dict(NH=8, TILES=2, BLOCK=mlstm_triton.TILING.gate_block, HAS_INITIAL=True,
                                       HAS_FINAL=True, HAS_DM=True), "bf16", dict(num_warps=4)),
    (elementwise_triton, "_rms_norm", dict(HAS_RESIDUAL=True, BD=4096), "bf16", {}),
    (elementwise_triton, "_head_norm_gate", dict(BD=512), "bf16", {}),
    (elementwise_triton, "_silu_mul", dict(BD=2048), "bf16", {}),
    (elementwise_triton, "_soft_cap_gates", dict(HAS_MASK=True, BN=1024), "bf16", {}),
    (elementwise_triton, "_step_gates", dict(HAS_MASK=True, BK=256), "bf16", dict(num_warps=1)),
    *(decode_job(rows, outputs, epilogue) for rows in (1, 32, 64)
      for outputs, epilogue in ((12304, 0), (4096, 1), (10944, 2))),
    slstm_job("_slstm_forward", 64, "fp32", 8, 3),
    slstm_job("_slstm_forward", 128, "bf16", 8, 3),
    slstm_job("_slstm_forward_streamed", 192, "fp32", 4, 3),
    slstm_job("_slstm_forward_streamed", 512, "bf16", 4, 3),
    slstm_job("_slstm_backward", 64, "fp32", 8, 1),
    slstm_job("_slstm_backward", 128, "bf16", 8, 1),
    slstm_job("_slstm_backward_streamed", 192, "fp32", 4, 3),
    slstm_job("_slstm_backward_streamed", 512, "bf16", 4, 3),
]


def signature(fn, constexprs: dict, data: str, data_pointers: set) -> dict:
    """Tensors are the capitalised parameters (in `data` where the model's data is, else fp32), then scalars and
    constexprs."""
    types = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name == "MASK":
            types[name] = "*u8"
        elif name[0].isupper() and name not in INTEGERS:
            types[name] = f"*{data}" if name in data_pointers else "*fp32"
        else:
            types[name] = "fp32" if name in FLOATS else "i32"
    return types


def aligned(types: dict) -> dict:
    """What the JIT assumes of the launches' pointers and strides (`s_*`), all multiples of 16 at the 7B's shapes:
    16-divisible. Without it no load is 16-byte vectorised, none is pipelined through shared memory, and the
    compiled kernel (its shared memory, its registers) is not the one that runs."""
    return {(i,): [["tt.divisibility", 16]] for i, (name, kind) in enumerate(types.items())
            if kind.startswith("*") or (name.startswith("s_") and kind == "i32")}


def compile_all() -> None:
    for module, name, constexprs, data, options in JOBS:
        fn = getattr(module, name)
        types = signature(fn, constexprs, data, DATA_POINTERS[module])
        source = triton.compiler.ASTSource(fn=fn, signature=types, constexprs=constexprs, attrs=aligned(types))
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        assert len(compiled.asm["cubin"]) > 0 and compiled.metadata.shared <= SM90_SHARED_MEMORY, compiled.metadata
        print(f"{name} ({data}): {compiled.metadata.shared} bytes of shared memory, sm_90 cubin")


def test_every_kernel_compiles_for_sm90_within_its_shared_memory():
    # In a process of its own: this one may run the kernels in Triton's interpreter, which compiles nothing.
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("sm_90 cubin") == len(JOBS)


if __name__ == "__main__":
    compile_all()
