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
