"""The corpus, tokenizer and recipe of the model shipped with xlstm_hf (`xlstm_hf.default_model_path()`).

The corpus exists offline on every machine with Python: the `.py` files of the running interpreter's standard
library (`sysconfig.get_paths()["stdlib"]`). Left out: third-party packages (`site-packages`, `dist-packages`),
byte-code caches, files that are not UTF-8, and the test suites (folders named `test`, `tests`, `idle_test`), which
many distributions strip or ship separately (Debian and Ubuntu, the official Docker images), so that one Python
version gives the same corpus wherever it is installed.

A fixed part of the files is held out for evaluation: a file is held out when the SHA-256 of its path relative to
the standard library root (POSIX separators) falls into the first `HELD_OUT_PERCENT` of 100 buckets. The split
depends on nothing but the path, so it is the same on every Python, and a file held out on one version is held
out on all of them.

The tokenizer is a byte-level BPE trained with `tokenizers` on the training files only, with the special tokens at
the ids the 7B uses (bos 0, pad 1, eos 2).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

HELD_OUT_PERCENT = 5
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
SPECIAL_TOKENS = ("<|bos|>", "<|pad|>", "<|endoftext|>")  # ids 0, 1, 2: the 7B's bos, pad and eos
TRAINING_LOG = "training_log.json"
LOSS_PLOT = "loss.png"


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relative_path: str) -> bool:
    """Whether a file (path relative to the standard library root, POSIX separators) belongs to the held-out
    split: a stable hash of the path, the same on every Python and machine."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELD_OUT_PERCENT


def stdlib_files(split: str, root: str | Path | None = None) -> dict[str, str]:
    """The corpus files of one split ("train" or "held_out"): relative path -> source text, sorted by path."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    root = Path(root) if root is not None else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"standard library folder not found: {root}")
    files = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if EXCLUDED_DIRS.intersection(relative.split("/")[:-1]) or is_held_out(relative) != (split == "held_out"):
            continue
        try:
            files[relative] = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):  # a few files are deliberately in other encodings
            continue
    if not files:
        raise ValueError(f"no {split} files of the standard library under {root}")
    return files


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192):
    """A byte-level BPE tokenizer (transformers' `PreTrainedTokenizerFast`) trained on `texts`, with bos, pad and
    eos at ids 0, 1, 2. Any byte sequence encodes; decoding restores the text exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must hold the 256 bytes and {len(SPECIAL_TOKENS)} special tokens, "
                         f"got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    bos, pad, eos = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, pad_token=pad, eos_token=eos,
                                   unk_token=None, clean_up_tokenization_spaces=False)


def corpus_summary(train: dict[str, str], held_out: dict[str, str]) -> dict:
    """What the training log records about the corpus: where it came from and its size."""
    return {"name": "stdlib", "python": sys.version.split()[0], "root": str(stdlib_root()),
            "held_out_percent": HELD_OUT_PERCENT, "excluded_dirs": sorted(EXCLUDED_DIRS),
            "train_files": len(train), "train_bytes": sum(len(t.encode()) for t in train.values()),
            "held_out_files": len(held_out), "held_out_bytes": sum(len(t.encode()) for t in held_out.values())}


def read_training_log(folder: str | Path) -> dict:
    """The training log (`training_log.json`) that `examples/train.py` writes next to the model."""
    path = Path(folder) / TRAINING_LOG
    if not path.is_file():
        raise FileNotFoundError(f"no {TRAINING_LOG} in {folder}: train with examples/train.py first")
    return json.loads(path.read_text(encoding="utf-8"))


def model_card(model, log: dict, plot: str | None = None) -> str:
    """README.md of a model trained on the standard library: the generic card of `xlstm_hf.hub.model_card` plus the
    recipe (exact command, corpus, versions), the held-out perplexity beside the uniform baseline, and the loss
    curve (`plot`, a file name in the model folder) when there is one."""
    from .hub import model_card as generic_card

    corpus, config, params = log["corpus"], model.config, sum(p.numel() for p in model.parameters())
    loss = log["held_out_loss"]
    lines = [
        "## The default model of xlstm_hf", "",
        "A small code model for offline use: `xlstm-hf generate \"def fibonacci(n):\"` completes a prompt with it on "
        "the CPU, and `AutoModelForCausalLM.from_pretrained(xlstm_hf.default_model_path())` loads it.", "",
        "## Training recipe", "",
        "Trained by the xlstm_hf project with its own training script; reproduce it from the repository root with:",
        "", "```bash", log["command"], "```", "",
        f"- Architecture: the 7B's block design at width {config.hidden_size}, {config.num_hidden_layers} blocks, "
        f"{config.num_heads} heads, FFN {config.ffn_dim}, tied embeddings: {config.tie_word_embeddings}; "
        f"{params:,} parameters, saved in {str(model.dtype).removeprefix('torch.')}.",
        f"- Corpus: the `.py` files of the Python {corpus['python']} standard library without test suites and "
        f"third-party packages; {corpus['train_files']} files ({corpus['train_bytes'] / 1e6:.1f} MB, "
        f"{log['train_tokens'] / 1e6:.2f}M tokens) for training, {corpus['held_out_files']} files "
        f"({corpus['held_out_bytes'] / 1e6:.2f} MB, {log['held_out_tokens'] / 1e6:.2f}M tokens) held out by a hash "
        f"of their path ({corpus['held_out_percent']}%, `xlstm_hf.stdlib_corpus.is_held_out`).",
        f"- Tokenizer: byte-level BPE trained with `tokenizers` on the training files, vocabulary {config.vocab_size}.",
        f"- Training: {log['steps']} steps of {log['tokens_per_step']:,} tokens ({log['tokens_seen'] / 1e6:.1f}M "
        f"tokens, {log['tokens_seen'] / log['train_tokens']:.2f} epochs) in {log['train_seconds']:.0f} s on "
        f"{log['device']} ({log['tokens_per_second']:,.0f} tokens/s while training); {log['versions']}.",
        "", "## Results", "",
        "| held-out loss | held-out perplexity | uniform baseline (vocabulary) |", "|---|---|---|",
        f"| {loss:.4f} | {math.exp(loss):.2f} | {config.vocab_size} |", "",
        "Per-token loss and perplexity of the saved weights on the held-out files.",
    ]
    if plot:
        lines += ["", f"![training and held-out loss]({plot})"]
    card = generic_card(model).replace("\n# folder\n", "\n# xlstm_hf default model\n", 1)
    return card + "\n" + "\n".join(lines) + "\n"
