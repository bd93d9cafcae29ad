"""Run-time kernel selection, and the model running on the Triton kernels (interpreted on the CPU)."""

import json
import logging

import pytest
import torch

import xlstm_hf
from helpers import random_ids, tiny_model
from test_configuration import NXAI_7B_CONFIG
from xlstm_hf import XLSTMConfig
from xlstm_hf.kernels import backend, normalize_backend, resolve_backend


@pytest.fixture(autouse=True)
def clean_override(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    yield
    xlstm_hf.set_kernel_backend(None)


@pytest.mark.parametrize("name, expected", [
    ("chunkwise--triton_xl_chunk", "triton"), ("chunkwise--triton_limit_chunk", "triton"),
    ("native_sequence__triton", "triton"), ("triton", "triton"), ("triton_fused", "triton"),
    ("native", "torch"), ("chunkwise--native_autograd", "torch"), ("TORCH", "torch"), (None, "auto"),
])
def test_legacy_names_map_onto_ours(name, expected):
    assert normalize_backend(name) == expected


def test_unknown_name_is_refused_by_name(monkeypatch):
    with pytest.raises(ValueError, match="flash_v9"):
        normalize_backend("flash_v9")
    monkeypatch.setenv(backend.ENV_VAR, "flash_v9")
    with pytest.raises(ValueError, match=f"^environment variable {backend.ENV_VAR}: .*flash_v9"):
        tiny_model()(random_ids(1, 3))


def test_precedence_python_over_environment_over_config(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert backend.requested_backend("triton_fused") == "torch"
    xlstm_hf.set_kernel_backend("triton")
    assert backend.requested_backend("native") == "triton"
    xlstm_hf.set_kernel_backend(None)
    monkeypatch.delenv(backend.ENV_VAR)
    assert backend.requested_backend("chunkwise--triton_limit_chunk") == "triton"
    assert backend.requested_backend(None) == "auto"


def test_cpu_runs_the_reference_and_a_triton_request_falls_back(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    backend._decide.cache_clear()
    assert resolve_backend("cpu") == "torch"
    with caplog.at_level(logging.WARNING, logger=backend.__name__):
        xlstm_hf.set_kernel_backend("triton")
        assert resolve_backend("cpu") == "torch"
        assert resolve_backend("cpu") == "torch"
    assert sum("Triton requested but not usable" in r.message for r in caplog.records) == 1  # logged once


def test_the_choice_is_inspectable_and_never_saved(tmp_path):
    config = XLSTMConfig.from_dict({**NXAI_7B_CONFIG, "embedding_dim": 64, "num_blocks": 1, "head_dim": 8})
    assert normalize_backend(config.kernel_preference) == "triton"
    large = XLSTMConfig(hidden_size=64, num_heads=2, chunkwise_kernel="chunkwise--triton_xl_chunk")
    assert large.kernel_preference == "chunkwise--triton_xl_chunk"
    large.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["chunkwise_kernel"] == "chunkwise--native_autograd" and "_requested_kernel" not in saved
    config.save_pretrained(tmp_path)  # NX-AI's forward_backend_name / step_backend_name were saved back
    assert not {"forward_backend_name", "step_backend_name"} & json.loads((tmp_path / "config.json").read_text()).keys()
    assert tiny_model().kernel_backend == "torch"  # on the CPU


@pytest.mark.parametrize("field, name, message", [
    ("chunkwise_kernel", "chunkwise--triton_xl_chunk_siging", "sigmoid input gate"),  # another cell: ran ours
    ("forward_backend_name", "parallel--native_siging_autograd", "sigmoid input gate"),
    ("step_kernel", "tritn", "unknown mLSTM kernel backend"),  # every forward raised, naming no field
])
def test_a_kernel_name_no_backend_answers_to_is_refused_naming_its_field(field, name, message):
    with pytest.raises(ValueError, match=f"^{field}: .*{message}"):
        XLSTMConfig(hidden_size=64, num_heads=2, **{field: name})


def test_every_native_kernel_name_of_the_xlstm_package_runs_the_reference():
    for name in ("parallel--native_stablef_custbw", "parallel--native_stablef_autograd", "chunkwise--native_custbw"):
        assert normalize_backend(XLSTMConfig(hidden_size=64, num_heads=2, chunkwise_kernel=name).kernel_preference) \
            == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter path is for machines without a GPU")
def test_model_on_the_triton_kernels_matches_the_reference():
    pytest.importorskip("triton")
    model = tiny_model()
    ids = random_ids(2, 21)
    reference = model(ids[:, :20])
    ref_step = model(ids[:, 20:], cache=reference.cache)
    xlstm_hf.set_kernel_backend("triton")
    assert model.kernel_backend == "triton"
    out = model(ids[:, :20])
    step = model(ids[:, 20:], cache=out.cache)  # the fused step kernel, in place on the cache
    assert (out.logits - reference.logits).abs().max() < 1e-4
    assert (step.logits - ref_step.logits).abs().max() < 1e-4
    for a, b in zip(step.cache.layers, ref_step.cache.layers):
        assert torch.allclose(a.C, b.C, atol=1e-5)
    loss = model(ids, labels=ids).loss  # training: the chunkwise backward
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    xlstm_hf.set_kernel_backend("torch")
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-3), name
