"""Shared test helpers: tiny configs and models with non-trivial weights."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest
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
                noise = torch.randn(p.shape, generator=gen).to(p.device)
                p.copy_(noise * 0.1 if name.endswith("weight") else p * 0.2 + noise)
    return model


def tiny_model(seed: int = 0, **overrides) -> XLSTMForCausalLM:
    torch.manual_seed(seed)
    return perturb_gates(XLSTMForCausalLM(tiny_config(**overrides)), seed).eval()


def random_ids(batch: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_pad(rows: list[torch.Tensor], pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, length) rows as one batch padded on the left (as generate() pads), with its attention mask."""
    return _pad(rows, pad_id, left=True)


def right_pad(rows: list[torch.Tensor], pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, length) rows as one batch padded on the right (as SFT collators pad), with its attention mask."""
    return _pad(rows, pad_id, left=False)


def _pad(rows, pad_id, left):
    length = max(r.shape[1] for r in rows)
    batch = torch.full((len(rows), length), pad_id)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for r, row in enumerate(rows):
        span = slice(length - row.shape[1], length) if left else slice(0, row.shape[1])
        batch[r, span], mask[r, span] = row[0], 1
    return batch, mask


# generate() modes a recurrent model must serve (each with and without the cache in the tests).
GENERATION_MODES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    "beam_search": dict(num_beams=3, do_sample=False),
    "beam_search_returns": dict(num_beams=4, num_return_sequences=2, do_sample=False),
    "sampling_returns": dict(do_sample=True, num_return_sequences=3),
    "repetition_penalty": dict(do_sample=False, repetition_penalty=1.5),
}

# How transformers refuses assisted decoding for a recurrent model: up to 5.24 it names the model stateful, from
# 5.25 on it asks for a cache that can be cropped.
ASSISTED_DECODING_REFUSAL = "stateful|cropped"


@torch.no_grad()
def check_padded_batch_matches_each_row(model, rows: list[torch.Tensor], new_tokens: int) -> None:
    """A left-padded batch gives every row the logits and the greedy continuation it gets alone."""
    batch, mask = left_pad(rows)
    padded = model(batch, attention_mask=mask).logits
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False)
    for r, row in enumerate(rows):
        assert (padded[r, -row.shape[1]:] - model(row).logits[0]).abs().max() < 1e-5
        # An explicit mask: generate() would otherwise take a real token equal to pad_token_id for padding.
        alone = model.generate(row, attention_mask=torch.ones_like(row), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)
        assert torch.equal(generated[r, batch.shape[1]:], alone[0, row.shape[1]:])


def check_cached_generate_equals_recomputing(model, rows: list[torch.Tensor], mode: str, new_tokens: int) -> None:
    """generate() in `mode` on a left-padded batch gives the same tokens with the cache as with use_cache=False,
    which runs the whole sequence again at every step: no state, no reorder, an independent reference."""
    ids, mask = left_pad(rows)
    outs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        outs.append(model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                   use_cache=use_cache, **GENERATION_MODES[mode]))
    assert torch.equal(outs[0], outs[1])
    returned = len(rows) * GENERATION_MODES[mode].get("num_return_sequences", 1)
    assert outs[0].shape == (returned, ids.shape[1] + new_tokens)


def make_tokenizer():
    """A word-level tokenizer over a small vocabulary (fits the tiny models), with special tokens and a chat
    template; built offline with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<bos>", "<pad>", "<eos>", "<unk>", "<user>", "<assistant>"]
    words = ("the a of to and in is it you that he was for on are with as his they be at one have this from or had "
             "by word but what some we can out other were all there when up use your how said an each she which do "
             "their time if will way about many then them write would like so these her long make thing see him "
             "two").split()
    words += [f"w{index}" for index in range(TINY["vocab_size"] - len(specials) - len(words))]
    vocab = {token: index for index, token in enumerate(specials + words)}
    assert len(vocab) == TINY["vocab_size"]
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<user> ' if m['role'] == 'user' else '<assistant> ' }}{{ m['content'] }} "
        "{% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    return tokenizer


def copy_forcing_bos(folder, destination):
    """A copy of the checkpoint `folder` whose config asks for a BOS token first, as NX-AI/xLSTM-7b's does
    (`force_bos_token_insert`)."""
    copy = shutil.copytree(folder, destination)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "force_bos_token_insert": True}))
    return copy


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNEL_DTYPES = [torch.bfloat16] if DEVICE == "cuda" else [torch.float32, torch.float16]  # interpreter: no bf16 dot
# Small-shape checks in every dtype the kernels take, bf16 only on a GPU (the interpreter's bf16 dot is wrong).
HALF_DTYPES = [torch.float16] + [torch.bfloat16] * (DEVICE == "cuda")
ALL_DTYPES = [torch.float32, *HALF_DTYPES]


def close(ours: torch.Tensor, ref: torch.Tensor, steps: float = 1.0) -> None:
    """Equal up to `steps` rounding steps of the dtype, relative to max(|ref|, 1) (fused kernels round where the
    modules do; exp and tanh may differ in the last float32 bit, which a rounding to a short dtype can carry)."""
    tol = steps * {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[ref.dtype]
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    err = ((ours.float() - ref.float()).abs() / ref.float().abs().clamp_min(1)).max().item()
    assert err <= tol, err


def randn(*shape, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Normal values on DEVICE, the same for the same shape."""
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape))) * scale).to(DEVICE, dtype)


def run_script(path: Path, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `python <path> <args>` when it exits through argparse (--help, a bad option),
    run in this process (a new interpreter per script spent seconds importing torch), with the script's folder first
    on sys.path as when it runs."""
    argv, search_path, out, err = sys.argv, list(sys.path), io.StringIO(), io.StringIO()
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, search_path
    return exited.value.code or 0, out.getvalue(), err.getvalue()


def script_help(path: Path) -> str:
    """What `python <path> --help` prints. Fails unless it exits with 0."""
    code, out, err = run_script(path, "--help")
    assert code == 0, f"{path.name} --help exited with {code}: {err[-2000:]}"
    return out
