"""Multi-query associative recall (MQAR, Arora et al. 2023; the xLSTM paper's Figure 6 at small scale): train
xLSTM[1:1], xLSTM[1:0] and a Llama of matched width on generated key-value sequences, and report the accuracy of
recalling the values against the number of key-value pairs.

A sequence holds N key-value pairs (keys from the lower half of the vocabulary, values from the upper half, keys
distinct), then the N keys again in a random order, each followed by its value. The model is scored only where it
has just read a queried key: predicting its value. Everything runs offline; the data is generated.

    python examples/mqar.py --help
    python examples/mqar.py --mixed --pairs 4 8 16 32 64 --steps 4000 --lr 1e-3 3e-3 --jobs 6 --output-dir out  # GPU
    python examples/mqar.py --tiny --output-dir /tmp/mqar                                               # CPU

Writes `mqar.json` (accuracy per model and N at its best learning rate, every run, the command) and `mqar.md`, and
`mqar.png` when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shlex
import sys
import tempfile

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from xlstm_hf import XLSTMStackConfig, XLSTMStackForCausalLM
from xlstm_hf.arguments import folder_to_save_into
from xlstm_hf.training import save_atomically

IGNORE = -100
MODELS = ("xlstm_1_1", "xlstm_1_0", "llama")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="key-value pairs N")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens a sequence (>= 4 N)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--width", type=int, default=128, help="model width (embedding dim) of every model")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3],
                        help="learning rates: every (model, N) trains at each, and its best accuracy is reported "
                             "(the paper's protocol sweeps them)")
    parser.add_argument("--eval-sequences", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed", action="store_true",
                        help="train each model once on sequences of every N in --pairs in turn and score it at each N "
                             "(Zoology's protocol, which the paper follows) instead of one training per N")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings run at once, each in its own process (small models leave a GPU mostly idle)")
    parser.add_argument("--tiny", action="store_true", help="a few steps of small models on the CPU (a smoke run)")
    parser.add_argument("--output-dir", type=folder_to_save_into, required=True)
    args = parser.parse_args(argv)
    if args.tiny:
        args.pairs, args.seq_len, args.vocab_size, args.width = [2, 4], 32, 64, 32
        args.steps, args.batch_size, args.eval_sequences = 4, 8, 16
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.seq_len < 4 * max(args.pairs):
        parser.error(f"--seq-len {args.seq_len} is too short for --pairs {max(args.pairs)} (needs 4 N tokens)")
    if args.vocab_size < 4 * max(args.pairs):
        parser.error(f"--vocab-size {args.vocab_size} is too small for {max(args.pairs)} distinct keys and values")
    return args


def mqar_batch(count: int, pairs: int, seq_len: int, vocab_size: int, generator: torch.Generator) -> dict:
    """`count` MQAR sequences: input ids, labels (the value after each queried key, IGNORE elsewhere)."""
    half = vocab_size // 2
    keys = torch.argsort(torch.rand(count, half - 1, generator=generator), dim=1)[:, :pairs] + 1  # 0: padding
    values = torch.randint(half, vocab_size, (count, pairs), generator=generator)
    order = torch.argsort(torch.rand(count, pairs, generator=generator), dim=1)
    ids = torch.zeros(count, seq_len, dtype=torch.long)
    ids[:, 0 : 2 * pairs : 2], ids[:, 1 : 2 * pairs : 2] = keys, values
    queried = 2 * pairs
    ids[:, queried : 4 * pairs : 2] = keys.gather(1, order)
    ids[:, queried + 1 : 4 * pairs : 2] = values.gather(1, order)
    labels = torch.full_like(ids, IGNORE)
    labels[:, queried + 1 : 4 * pairs : 2] = ids[:, queried + 1 : 4 * pairs : 2]  # scored: the value after a query
    return dict(input_ids=ids, labels=labels)


class MQARData(Dataset):
    """Fresh sequences for every index (a fixed seed per index: reproducible, never repeated in training); sequence
    `index` holds `pairs[index % len(pairs)]` key-value pairs."""

    def __init__(self, size: int, pairs: tuple[int, ...], seq_len: int, vocab_size: int, seed: int):
        self.size, self.pairs, self.seq_len, self.vocab_size, self.seed = size, pairs, seq_len, vocab_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        pairs = self.pairs[index % len(self.pairs)]
        return {k: v[0] for k, v in mqar_batch(1, pairs, self.seq_len, self.vocab_size, generator).items()}


def build(name: str, args) -> torch.nn.Module:
    """Two blocks of width `--width` each: xLSTM[1:1] (an mLSTM and an sLSTM block), xLSTM[1:0] (two mLSTM blocks),
    or a two-layer Llama with the same width."""
    if name == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.width, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=4,
                                            intermediate_size=2 * args.width,
                                            max_position_embeddings=args.seq_len))
    slstm_at = [1] if name == "xlstm_1_1" else []
    config = XLSTMStackConfig(
        vocab_size=args.vocab_size, embedding_dim=args.width, num_blocks=2, slstm_at=slstm_at,
        context_length=args.seq_len,
        mlstm_block={"mlstm": {"conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": 4}},
        slstm_block={"slstm": {"backend": "vanilla", "num_heads": 4, "conv1d_kernel_size": 4},
                     "feedforward": {"proj_factor": 1.3, "act_fn": "gelu"}} if slstm_at else None,
    )
    return XLSTMStackForCausalLM(config)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: dict, batch_size: int) -> float:
    """Share of queried values predicted exactly (greedy), over the scored positions of `data`."""
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    for start in range(0, len(data["input_ids"]), batch_size):
        ids = data["input_ids"][start : start + batch_size].to(device)
        labels = data["labels"][start : start + batch_size].to(device)
        predicted = model(input_ids=ids).logits[:, :-1].argmax(-1)
        scored = labels[:, 1:] != IGNORE
        right += (predicted[scored] == labels[:, 1:][scored]).sum().item()
        total += scored.sum().item()
    return right / total


def train_one(name: str, trained_on: tuple[int, ...], lr: float, args) -> list[dict]:
    """Train `name` on sequences of `trained_on` key-value pairs; one run record per N scored (each of them)."""
    torch.manual_seed(args.seed)
    model = build(name, args)
    train = MQARData(args.steps * args.batch_size, trained_on, args.seq_len, args.vocab_size, args.seed)
    with tempfile.TemporaryDirectory(prefix="mqar-trainer-") as scratch:  # the Trainer's folder; nothing is saved
        training = TrainingArguments(
            output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=lr,
            warmup_steps=args.steps // 10, lr_scheduler_type="cosine", weight_decay=0.1,
            logging_steps=max(args.steps // 10, 1), save_strategy="no", report_to=[], bf16=torch.cuda.is_available(),
            use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=args.seed,
        )
        Trainer(model=model, args=training, train_dataset=train).train()
    parameters = sum(p.numel() for p in model.parameters())
    runs = []
    for pairs in trained_on:
        held_out = mqar_batch(args.eval_sequences, pairs, args.seq_len, args.vocab_size,
                              torch.Generator().manual_seed(args.seed + 1))
        runs.append(dict(model=name, pairs=pairs, lr=lr, accuracy=accuracy(model, held_out, args.batch_size),
                         parameters=parameters, trained_on=list(trained_on)))
    return runs


def best_runs(runs: list[dict]) -> list[dict]:
    """Per model and set of N trained on, the runs of the learning rate with the best mean accuracy over the N scored
    (the first of equals), in the order of `runs`: one training per N gives each N its best rate, `--mixed` each
    model the rate of its best single training."""
    trainings: dict[tuple, list[float]] = {}  # (model, trained on, lr) -> accuracies, in the order of `runs`
    for r in runs:
        trainings.setdefault((r["model"], tuple(r["trained_on"]), r["lr"]), []).append(r["accuracy"])
    best: dict[tuple, tuple[float, float]] = {}  # (model, trained on) -> (lr, mean accuracy)
    for (name, trained_on, lr), accuracies in trainings.items():
        mean = sum(accuracies) / len(accuracies)
        if (name, trained_on) not in best or mean > best[name, trained_on][1]:
            best[name, trained_on] = (lr, mean)
    return [r for r in runs if r["lr"] == best[r["model"], tuple(r["trained_on"])][0]]


def report(rows: list[dict], args) -> str:
    pairs = sorted({r["pairs"] for r in rows})
    lines = ["| model | parameters | " + " | ".join(f"N = {n}" for n in pairs) + " |",
             "|---|---|" + "---|" * len(pairs)]
    for name in args.models:
        mine = {r["pairs"]: r for r in rows if r["model"] == name}
        cells = " | ".join(f"{mine[n]['accuracy']:.3f}" for n in pairs)
        lines.append(f"| {name} | {next(iter(mine.values()))['parameters']:,} | {cells} |")
    return "\n".join(lines)


def plot(rows: list[dict], args, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name in args.models:
        points = sorted((r["pairs"], r["accuracy"]) for r in rows if r["model"] == name)
        ax.plot(*zip(*points), marker="o", label=name)
    pairs = sorted({r["pairs"] for r in rows})
    ax.set(xscale="log", xlabel="key-value pairs", ylabel="recall accuracy", ylim=(0, 1.02),
           title=f"MQAR, sequence {args.seq_len}, width {args.width}"
                 + (", trained on every N" if args.mixed else ""))
    ax.set_xticks(pairs, [str(n) for n in pairs])
    ax.minorticks_off()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def train_all(jobs: list[tuple[str, tuple[int, ...], float]], args) -> list[dict]:
    """`train_one` for every (model, pairs trained on, lr), `--jobs` at a time in spawned processes (CUDA needs
    spawn); their run records in the order of `jobs`."""
    if args.jobs == 1:
        return [run for job in tqdm(jobs, desc="MQAR runs") for run in train_one(*job, args)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(train_one, *job, args) for job in jobs]
        for _ in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="MQAR runs"):
            pass
        return [run for future in futures for run in future.result()]


def main(argv=None) -> None:
    args = parse_args(argv)
    trainings = [tuple(args.pairs)] if args.mixed else [(n,) for n in args.pairs]
    runs = train_all([(name, pairs, lr) for pairs in trainings for name in args.models for lr in args.lr], args)
    rows = best_runs(runs)
    table = report(rows, args)
    print(table)

    def write(folder: str) -> None:
        with open(os.path.join(folder, "mqar.json"), "w", encoding="utf-8") as handle:
            json.dump(dict(command=shlex.join([sys.executable, *sys.argv]), args=vars(args), rows=rows, runs=runs),
                      handle, indent=1)
        with open(os.path.join(folder, "mqar.md"), "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        plot(rows, args, os.path.join(folder, "mqar.png"))

    save_atomically(args.output_dir, write)


if __name__ == "__main__":
    main()
