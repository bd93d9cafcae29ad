"""Shared test helpers: tiny configs and models with non-trivial weights."""

from __future__ import annotations

import torch

import xlstm_hf  # noqa: F401  (registers the Auto classes)
from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

TINY = dict(vocab_size=101, hidden_size=128, num_hidden_layers=2, num_heads=2, chunk_size=16)


def tiny_config(**overrides) -> XLSTMConfig:
    return XLSTMConfig(**{**TINY, **overrides})


def perturb_gates(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The paper's init (input-gate bias -10, gate weights 0) makes the memory nearly inert; give the gates
    input-dependent, order-one values so that tests exercise the whole cell."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate_preact" in name and "ogate" not in name:
                noise = torch.randn(p.shape, generator=gen)
                p.copy_(noise * 0.1 if name.endswith("weight") else p * 0.2 + noise)
    return model


def tiny_model(seed: int = 0, **overrides) -> XLSTMForCausalLM:
    torch.manual_seed(seed)
    return perturb_gates(XLSTMForCausalLM(tiny_config(**overrides)), seed).eval()


def random_ids(batch: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))

