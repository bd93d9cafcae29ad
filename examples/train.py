"""Train an xLSTM language model with the transformers Trainer on local text or JSON-lines files, or on the Python
standard library's source files (`--corpus stdlib`).

From scratch (a preset size or a config.json) or from a checkpoint: by default the model shipped with xlstm_hf.
Texts are tokenized, joined and cut into blocks. Runs offline on the CPU at small sizes; on a GPU the Triton kernels
run the mLSTM forward and backward. Writes the model, the tokenizer and `training_log.json` (the command, the loss
curve, the held-out loss) into the output folder, atomically.

    python examples/train.py --help
    python examples/train.py --preset tiny --tokenizer path/to/tokenizer --train-file a.txt b.txt --steps 200 \\
        --output-dir my-xlstm
    python examples/train.py --train-file my_code/*.py --steps 200 --output-dir my-xlstm   # the shipped model, tuned

The model shipped with xlstm_hf (`xlstm_hf.default_model_path()`; its README.md gives the exact command) comes from
`--preset stdlib --corpus stdlib`: a byte-level BPE tokenizer and the model trained on this interpreter's standard
library, a fixed 5% of the files held out (see `xlstm_hf.stdlib_corpus`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import tempfile
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

from xlstm_hf import XLSTMConfig, XLSTMForCausalLM, default_model_path
from xlstm_hf.stdlib_corpus import (SPECIAL_TOKENS, TRAINING_LOG, corpus_summary, model_card, stdlib_files,
                                     train_tokenizer)
from xlstm_hf.arguments import (UsageError, at_least, check_vocabulary, folder_to_save_into, load_pretrained,
                                load_tokenizer, non_negative_float, positive_float, positive_int, read_data,
                                reports_usage_errors)
from xlstm_hf.training import PackedBlocks, save_atomically, use_cache_kept

PRESETS = {  # the 7B's block design at smaller widths
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_heads=2),
    "stdlib": dict(hidden_size=384, num_hidden_layers=5, num_heads=3, tie_word_embeddings=True),  # shipped model
    "small": dict(hidden_size=512, num_hidden_layers=8, num_heads=4),
    "1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_heads=4),
    "7b": dict(),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="continue training this checkpoint, folder or Hub id (default: the model "
                                        "shipped with xlstm_hf, unless --preset or --config is given)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="train from scratch at this size")
    source.add_argument("--config", type=config_file, help="train from scratch with this config.json")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's, or one trained on --corpus)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--train-file", nargs="+", help=".jsonl (one object a line) or text files")
    data.add_argument("--corpus", choices=["stdlib"],
                      help="this interpreter's standard library sources, a fixed 5%% of the files held out for "
                           "evaluation; from scratch without --tokenizer, a byte-level BPE is trained on them")
    parser.add_argument("--eval-file", nargs="+", help="held-out files: eval loss and perplexity at the end")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--vocab-size", type=at_least(256 + len(SPECIAL_TOKENS)), default=8192,
                        help="vocabulary of the tokenizer trained with --corpus (default: 8192)")
    parser.add_argument("--output-dir", type=folder_to_save_into, required=True)
    parser.add_argument("--block-size", type=at_least(2), default=512)  # a block of one token predicts nothing
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=1000)
    parser.add_argument("--max-minutes", type=positive_float,
                        help="stop the training loop after this many minutes even before --steps (the learning-rate "
                             "schedule still spans --steps); the held-out evaluation and saving follow")
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--warmup", type=at_least(0),
                        help="learning-rate warmup steps, at most --steps (default: 10%% of --steps)")
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.1)
    parser.add_argument("--log-every", type=positive_int,
                        help="log the training loss every N steps (default: steps / 20)")
    parser.add_argument("--eval-every", type=positive_int, help="also evaluate on the held-out data every N steps")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--save-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="dtype of the saved weights (default: float32); the final held-out evaluation runs "
                             "on the weights rounded to it")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.corpus and args.eval_file:
        parser.error("--eval-file: --corpus brings its own held-out files")
    if args.warmup is None:
        args.warmup = args.steps // 10
    elif args.warmup > args.steps:
        parser.error(f"--warmup {args.warmup}: more than --steps {args.steps}")
    if args.eval_every is not None and not (args.corpus or args.eval_file):
        parser.error("--eval-every needs held-out data: --eval-file or --corpus")
    if (args.preset or args.config) and not (args.tokenizer or args.corpus):
        parser.error("--tokenizer is needed when training from scratch on --train-file")
    if not (args.model or args.preset or args.config):
        args.model = str(default_model_path())
    if args.train_file:  # read now: a bad file is a usage error, found before the model loads
        args.texts = read_data(parser, "--train-file", args.train_file, args.text_field)
        args.eval_texts = read_data(parser, "--eval-file", args.eval_file, args.text_field) if args.eval_file else None
    return args


def config_file(path: str) -> dict:
    """An argparse type: the settings of an XLSTMConfig JSON file (a file that is missing, not JSON or not a valid
    config is a usage error)."""
    try:
        return XLSTMConfig.from_json_file(path).to_dict()
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def load_texts(args) -> tuple[list[str], list[str] | None, dict | None]:
    """Training texts, held-out texts (or None) and, for a corpus, its summary for the log."""
    if args.corpus:
        train, held_out = stdlib_files("train"), stdlib_files("held_out")
        summary = corpus_summary(train, held_out)
        print(f"corpus: Python {summary['python']} standard library, {summary['train_files']} training files "
              f"({summary['train_bytes'] / 1e6:.1f} MB), {summary['held_out_files']} held out")
        return list(train.values()), list(held_out.values()), summary
    return args.texts, args.eval_texts, None


def build_tokenizer(args, texts: list[str]):
    """The tokenizer given (or the model's); from scratch on a corpus, a byte-level BPE trained on `texts`."""
    if args.tokenizer or args.model:
        return load_tokenizer(args)
    print(f"training a byte-level BPE tokenizer ({args.vocab_size} tokens) on the training files")
    return train_tokenizer(texts, args.vocab_size)


def packed_blocks(what: str, texts: list[str], tokenizer, block_size: int) -> PackedBlocks:
    """`PackedBlocks`, with too little data for one block as a usage error."""
    try:
        return PackedBlocks(texts, tokenizer, block_size)
    except ValueError as error:
        raise UsageError(f"--block-size {block_size}: {what} has {error}") from None


def build_model(args, tokenizer) -> XLSTMForCausalLM:
    if args.model:
        return load_pretrained(AutoModelForCausalLM, "--model", args.model, dtype=torch.float32)
    overrides = PRESETS[args.preset] if args.preset else args.config
    vocab = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(args.seed)
    return XLSTMForCausalLM(XLSTMConfig(**{**overrides, **vocab}))


class TimeLimit(TrainerCallback):
    """Ends the training loop once `minutes` have passed since it began."""

    def __init__(self, minutes: float):
        self.seconds, self.start = minutes * 60, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.start > self.seconds:
            control.should_training_stop = True


def round_weights_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round the weights to `dtype` in place, keeping their dtype (so evaluation sees what will be saved)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype))


@reports_usage_errors
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    log = {"command": shlex.join(["python", "examples/train.py", *argv]),
           "versions": f"Python {platform.python_version()}, torch {torch.__version__}, "
                       f"transformers {transformers.__version__}"}
    texts, eval_texts, log["corpus"] = load_texts(args)
    tokenizer = build_tokenizer(args, texts)
    train = packed_blocks("the training data", texts, tokenizer, args.block_size)  # before the model: data errors first
    evaluation = packed_blocks("the held-out data", eval_texts, tokenizer, args.block_size) if eval_texts else None
    model = build_model(args, tokenizer)
    for data in (train, evaluation):
        if data is not None:
            check_vocabulary(args, tokenizer, data.largest_id, model.config.vocab_size)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    log.update(parameters=sum(p.numel() for p in model.parameters()), vocab_size=model.config.vocab_size)
    print(f"{log['parameters']:,} parameters, mLSTM kernels: {model.kernel_backend}")
    log["train_tokens"] = train.blocks.numel()
    log["held_out_tokens"] = evaluation.blocks.numel() if evaluation is not None else 0
    # The Trainer works in a temporary folder: OUTPUT_DIR appears only through save_atomically, complete.
    with tempfile.TemporaryDirectory(prefix="xlstm-train-") as scratch:
        training = TrainingArguments(
            output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, weight_decay=args.weight_decay,
            lr_scheduler_type="cosine", warmup_steps=args.warmup, max_grad_norm=1.0,
            logging_steps=args.log_every or max(1, args.steps // 20), save_strategy="no", report_to=[], bf16=args.bf16,
            eval_strategy="steps" if args.eval_every else "no", eval_steps=args.eval_every,
            use_cpu=not torch.cuda.is_available(), seed=args.seed,
        )
        callbacks = [TimeLimit(args.max_minutes)] if args.max_minutes else []
        with use_cache_kept(model):
            trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=evaluation,
                              callbacks=callbacks)
            result = trainer.train()
        steps, seconds = trainer.state.global_step, result.metrics["train_runtime"]
        log.update(steps=steps, train_seconds=seconds, tokens_per_step=args.batch_size * training.world_size
                   * args.block_size, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")
        evaluating = sum(entry.get("eval_runtime", 0) for entry in trainer.state.log_history)  # periodic evaluations
        log.update(tokens_seen=steps * log["tokens_per_step"],
                   tokens_per_second=steps * log["tokens_per_step"] / (seconds - evaluating))
        print(f"final training loss: {result.training_loss:.4f} after {steps} steps in {seconds:.0f} s "
              f"({log['tokens_per_second']:,.0f} tokens/s)")
        save_dtype = getattr(torch, args.save_dtype)
        round_weights_(model, save_dtype)
        if evaluation is not None:
            log["held_out_loss"] = trainer.evaluate()["eval_loss"]
            print(f"eval loss: {log['held_out_loss']:.4f}, perplexity: {math.exp(log['held_out_loss']):.2f} "
                  f"(uniform: {model.config.vocab_size})")
        log["history"] = trainer.state.log_history
    model = model.to(save_dtype)

    def write_log(folder) -> None:
        (folder / TRAINING_LOG).write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")

    def write_card(folder) -> None:  # after save_pretrained, replacing its generic card
        (folder / "README.md").write_text(model_card(model, log), encoding="utf-8")

    save_atomically(args.output_dir, model, tokenizer, write_log, *([write_card] if args.corpus else []))
    print(f"saved model, tokenizer and {TRAINING_LOG} to {args.output_dir}")


if __name__ == "__main__":
    main()
