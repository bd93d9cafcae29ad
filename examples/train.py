"""Train an xLSTM language model with the transformers Trainer on local text or JSON-lines files.

From scratch (a preset size or a config.json) or from a checkpoint. Texts are tokenized, joined and cut into blocks.
Runs offline on the CPU at small sizes; on a GPU the Triton kernels run the mLSTM forward and backward.

    python examples/train.py --help
    python examples/train.py --preset tiny --tokenizer path/to/tokenizer --train-file a.txt b.txt --steps 200 \\
        --output-dir my-xlstm
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from xlstm_hf import XLSTMConfig, XLSTMForCausalLM
from xlstm_hf.training import PackedBlocks, read_texts, save_atomically

PRESETS = {  # the 7B's block design at smaller widths
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_heads=2),
    "small": dict(hidden_size=512, num_hidden_layers=8, num_heads=4),
    "1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_heads=4),
    "7b": dict(),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="continue training this checkpoint (folder or Hub id)")
    source.add_argument("--preset", choices=sorted(PRESETS), help="train from scratch at this size")
    source.add_argument("--config", help="train from scratch with this config.json")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    parser.add_argument("--train-file", nargs="+", required=True, help=".jsonl (one object a line) or text files")
    parser.add_argument("--eval-file", nargs="+", help="held-out files: eval loss and perplexity at the end")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_model(args, tokenizer) -> XLSTMForCausalLM:
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    overrides = PRESETS[args.preset] if args.preset else XLSTMConfig.from_json_file(args.config).to_dict()
    vocab = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(args.seed)
    return XLSTMForCausalLM(XLSTMConfig(**{**overrides, **vocab}))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.tokenizer is None and args.model is None:
        raise SystemExit("--tokenizer is needed when training from scratch")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = build_model(args, tokenizer)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, mLSTM kernels: {model.kernel_backend}")
    train = PackedBlocks(read_texts(args.train_file, args.text_field), tokenizer, args.block_size)
    evaluation = PackedBlocks(read_texts(args.eval_file, args.text_field), tokenizer, args.block_size) \
        if args.eval_file else None
    training = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.lr, weight_decay=args.weight_decay,
        lr_scheduler_type="cosine", warmup_steps=min(args.warmup, args.steps // 10), max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 20), save_strategy="no", report_to=[], bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(), seed=args.seed,
    )
    trainer = Trainer(model=model, args=training, train_dataset=train, eval_dataset=evaluation)
    result = trainer.train()
    print(f"final training loss: {result.training_loss:.4f}")
    if evaluation is not None:
        loss = trainer.evaluate()["eval_loss"]
        print(f"eval loss: {loss:.4f}, perplexity: {math.exp(loss):.2f}")
    save_atomically(args.output_dir, model, tokenizer)
    print(f"saved model and tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
