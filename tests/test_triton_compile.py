"""Every Triton kernel compiles for Hopper (sm_90) with the installed Triton, ahead of time, without a GPU.

CI installs the newest Triton from PyPI (3.9 removed block pointers; the kernels use plain pointer arithmetic);
the GPU image's Triton 3.6 compiles them at run time in the device-machine tests.
"""

import inspect
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
GPUTarget = pytest.importorskip("triton.backends.compiler").GPUTarget

from xlstm_hf.kernels import elementwise_triton, mlstm_triton  # noqa: E402

SEVEN_B = dict(NH=8, L=128, DQK=256, DV=512, IEEE=False)
BF16_POINTERS = {"Q", "K", "V", "H", "DH", "DQ", "DK", "DV_out", "C_states", "DC_states", "X", "Y", "RES", "W", "OUT",
                 "SUM", "O", "G", "Z", "I", "F", "I_OUT", "F_OUT", "F_in", "I_in"}
INTEGERS = {"S", "NC", "S_pad"}  # capitalised, yet sizes rather than tensors
FLOATS = {"scale", "eps", "cap"}
JOBS = {
    (mlstm_triton, "_fw_states"): dict(SEVEN_B, BK=64, BV=128, HAS_INITIAL=True),
    (mlstm_triton, "_prepare_gates"): dict(NH=8, L=128),
    (mlstm_triton, "_fw_outputs"): dict(SEVEN_B, BT=64, BK=64, BV=512),
    (mlstm_triton, "_bw_states"): dict(SEVEN_B, BK=64, BV=128, HAS_FINAL_GRAD=True),
    (mlstm_triton, "_bw_dq"): dict(SEVEN_B, BT=64, BK=128, BV=64),
    (mlstm_triton, "_bw_dk"): dict(SEVEN_B, BT=64, BK=128, BV=64),
    (mlstm_triton, "_bw_dv"): dict(SEVEN_B, BT=64, BK=128, BV=64),
    (mlstm_triton, "_step"): dict(DQK=256, DV=512, BK=256, BV=64),
    (mlstm_triton, "_denominator_grads"): dict(NH=8, D=512, BR=64, BD=128),
    (mlstm_triton, "_gate_grads"): dict(NH=8, TILES=2, BLOCK=1024, HAS_INITIAL=True, HAS_FINAL=True, HAS_DM=True),
    (elementwise_triton, "_rms_norm"): dict(HAS_RESIDUAL=True, BD=4096),
    (elementwise_triton, "_head_norm_gate"): dict(BD=512),
    (elementwise_triton, "_silu_mul"): dict(BD=2048),
    (elementwise_triton, "_soft_cap_gates"): dict(HAS_MASK=True, BN=1024),
}


def signature(fn, constexprs: dict) -> dict:
    """Tensors are the capitalised parameters (bf16 where the 7B has bf16 data), then scalars and constexprs."""
    types = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name == "MASK":
            types[name] = "*u8"
        elif name[0].isupper() and name not in INTEGERS:
            types[name] = "*bf16" if name in BF16_POINTERS else "*fp32"
        else:
            types[name] = "fp32" if name in FLOATS else "i32"
    return types


def compile_all() -> None:
    for (module, name), constexprs in JOBS.items():
        fn = getattr(module, name)
        source = triton.compiler.ASTSource(fn=fn, signature=signature(fn, constexprs), constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
        assert len(compiled.asm["cubin"]) > 0
        print(f"{name}: {len(compiled.asm['cubin'])} bytes of sm_90 cubin")


def test_every_kernel_compiles_for_sm90():
    # In a process of its own: this one may run the kernels in Triton's interpreter, which compiles nothing.
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("bytes of sm_90 cubin") == len(JOBS)


if __name__ == "__main__":
    compile_all()
