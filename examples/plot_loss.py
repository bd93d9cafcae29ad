"""Plot the loss curve of a model trained with examples/train.py and write its model card.

Reads `training_log.json` in the model folder, writes `loss.png` there (training loss and held-out loss against
tokens seen) and, for a model trained on `--corpus stdlib` (such as the one shipped with xlstm_hf), rewrites its
README.md with the recipe, the held-out perplexity and the plot. Needs matplotlib (`pip install matplotlib`); runs
on the CPU in seconds.

    python examples/plot_loss.py --help
    python examples/plot_loss.py xlstm_hf/default_model
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from xlstm_hf.stdlib_corpus import LOSS_PLOT, model_card, read_training_log
from xlstm_hf.training import write_atomically


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="model folder written by examples/train.py")
    return parser.parse_args(argv)


def plot(log: dict, path: Path) -> None:
    """The training loss and the held-out loss against tokens seen, written to `path` (a PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = log["tokens_per_step"] / 1e6
    train = [(e["step"] * tokens, e["loss"]) for e in log["history"] if "loss" in e]
    held_out = [(e["step"] * tokens, e["eval_loss"]) for e in log["history"] if "eval_loss" in e]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    axes.plot(*zip(*train), label="training loss", linewidth=1.2)
    if held_out:
        axes.plot(*zip(*held_out), "o-", label="held-out loss", markersize=3)
    axes.axhline(math.log(log["vocab_size"]), color="grey", linestyle=":", label="uniform baseline")
    axes.set(xlabel="tokens seen (millions)", ylabel="cross-entropy (nats per token)",
             title=f"{log['parameters'] / 1e6:.1f}M-parameter xLSTM, {log['steps']} steps")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    plt.close(figure)
    os.replace(tmp, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    log = read_training_log(args.folder)
    plot(log, args.folder / LOSS_PLOT)
    print(f"wrote {args.folder / LOSS_PLOT}")
    if log.get("corpus"):
        import xlstm_hf  # noqa: F401  (registers our classes)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.folder, dtype="auto")
        card = args.folder / "README.md"
        write_atomically(card, model_card(model, log, plot=LOSS_PLOT))
        print(f"wrote {card}")


if __name__ == "__main__":
    main()
