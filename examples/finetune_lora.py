"""LoRA fine-tuning of an xLSTM with PEFT and the transformers Trainer, on local text or JSON-lines files.

Runs offline on the CPU on a small model; on a GPU the Triton kernels train the 7B. Each example is one text, with
BOS first where the checkpoint asks for it (as `xlstm-hf generate` and lm-eval put it) and EOS last, cut to
--max-length tokens and right-padded in its batch with the padding masked exactly; the adapters are saved at the end.

    python examples/finetune_lora.py --help
    python examples/finetune_lora.py --model path/to/xlstm --train-file data.jsonl --steps 100 --output-dir lora-out
    python examples/finetune_lora.py --train-file my_code/*.py --output-dir lora-out   # the model shipped with xlstm_hf
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments, set_seed

import xlstm_hf
from xlstm_hf.arguments import (UsageError, at_least, bos_kwargs, check_vocabulary, folder_to_save_into,
                                load_pretrained, load_tokenizer, number_in, positive_float, positive_int, read_data,
                                reports_usage_errors)
from xlstm_hf.modeling_xlstm_stack import LORA_TARGET_MODULES as STACK_LORA_TARGET_MODULES
from xlstm_hf.training import SFTExamples, right_padded_batch, save_atomically, use_cache_kept


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id, with its tokenizer (default: the model shipped with "
                                        "xlstm_hf)")
    parser.add_argument("--tokenizer", help="tokenizer folder, if not the model's")
    parser.add_argument("--train-file", nargs="+", required=True, help=".jsonl (one object a line) or text files")
    parser.add_argument("--text-field", default="text", help="the JSON field holding the text (default: text)")
    parser.add_argument("--output-dir", type=folder_to_save_into, required=True, help="where the adapters go")
    parser.add_argument("--rank", type=positive_int, default=16, help="LoRA rank (default: 16)")
    parser.add_argument("--alpha", type=positive_float, default=32, help="LoRA alpha (default: 32)")
    parser.add_argument("--dropout", type=number_in(0, 1), default=0.05,  # a dropout of 1 would drop everything
                        help="LoRA dropout (default: 0.05)")
    parser.add_argument("--target-modules", nargs="+",
                        help="layers to adapt, or all-linear (default: per weight mode, "
                             f"{xlstm_hf.LORA_TARGET_MODULES}; for an xlstm_stack model, {STACK_LORA_TARGET_MODULES})")
    # An example of one token predicts nothing.
    parser.add_argument("--max-length", type=at_least(2), default=1024,
                        help="tokens per example, BOS and EOS included: a longer text is cut (default: 1024)")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--steps", type=positive_int, default=100)
    parser.add_argument("--lr", type=positive_float, default=2e-4)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--merge", action="store_true",
                        help="also save the merged model in OUTPUT_DIR/merged (without it, an earlier run's merged "
                             "model there is removed: it would not match the new adapters)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.model = args.model or str(xlstm_hf.default_model_path())
    args.texts = read_data(parser, "--train-file", args.train_file, args.text_field)  # before the slow model load
    return args


@reports_usage_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    # The config alone (fast) says whether the model expects BOS first, as the CLI and lm-eval give it, and how
    # large its vocabulary is.
    config = load_pretrained(AutoConfig, "--model", args.model)
    tokenizer = load_tokenizer(args, **bos_kwargs(config))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        dataset = SFTExamples(args.texts, tokenizer, args.max_length)  # before the slow model load: data errors first
    except ValueError as error:
        raise UsageError(f"--train-file {' '.join(args.train_file)}: {error}") from None
    if dataset.skipped:
        print(f"left out {dataset.skipped} texts of fewer than two tokens, EOS included: they predict nothing")
    if dataset.truncated:
        print(f"cut {dataset.truncated} texts to --max-length {args.max_length} tokens: their ends are not trained on")
    check_vocabulary(args, tokenizer, dataset.largest_id, config.vocab_size)  # before the slow model load
    set_seed(args.seed)  # before get_peft_model, whose LoRA init draws from it (the Trainer seeds only later)
    model = load_pretrained(AutoModelForCausalLM, "--model", args.model, dtype=torch.float32)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    targets = args.target_modules or xlstm_hf.lora_target_modules(model.config)
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as error:  # e.g. no layer of that name
        raise UsageError(f"--target-modules {' '.join(targets)}: {error}") from None
    model.print_trainable_parameters()
    print(f"mLSTM kernels: {model.base_model.model.kernel_backend}")

    collate = partial(right_padded_batch, pad_token_id=tokenizer.pad_token_id)
    # The Trainer works in a temporary folder: OUTPUT_DIR appears only through save_atomically, complete.
    with tempfile.TemporaryDirectory(prefix="finetune_lora-") as scratch:
        training = TrainingArguments(
            output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=min(10, args.steps // 10),
            logging_steps=max(1, args.steps // 20), save_strategy="no", report_to=[], bf16=args.bf16,
            use_cpu=not torch.cuda.is_available(), seed=args.seed, remove_unused_columns=False,
        )
        with use_cache_kept(model):
            trainer = Trainer(model=model, args=training, train_dataset=dataset, data_collator=collate)
            result = trainer.train()
    print(f"final training loss: {result.training_loss:.4f}")
    def save_merged(folder: Path) -> None:  # after the adapters are written: merging changes the model in place
        model.merge_and_unload().save_pretrained(folder / "merged")
        tokenizer.save_pretrained(folder / "merged")

    # One save: a failure while merging leaves no folder with adapters but without the merged model. An earlier
    # run's merged/ goes with the adapters it was made from.
    save_atomically(args.output_dir, model, tokenizer, *([save_merged] if args.merge else []), replaces=("merged",))
    print(f"saved adapters to {args.output_dir}" + (" and the merged model to its merged/" if args.merge else ""))


if __name__ == "__main__":
    main()
