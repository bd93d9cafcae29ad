"""Quickstart, fully offline: load an xLSTM through AutoModelForCausalLM (by default the small code model shipped
with xlstm_hf), prefill a prompt, then continue it greedily token by token from the recurrent state.

    python examples/quickstart.py --help
    python examples/quickstart.py --prompt "import os" --new-tokens 48
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import xlstm_hf
from xlstm_hf.arguments import UsageError, load_pretrained, positive_int, reports_usage_errors


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the model shipped with xlstm_hf)")
    parser.add_argument("--prompt", default="def fibonacci(n):", help='text to continue (default: "def fibonacci(n):")')
    parser.add_argument("--new-tokens", type=positive_int, default=32, help="tokens to continue greedily (default: 32)")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    path = args.model or str(xlstm_hf.default_model_path())
    tokenizer = load_pretrained(AutoTokenizer, "--model", path)
    model = load_pretrained(AutoModelForCausalLM, "--model", path, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"xlstm_hf {xlstm_hf.__version__}: {type(model).__name__} with {n_params / 1e6:.1f}M parameters, "
          f"{model.kernel_backend} kernels")

    prompt = tokenizer(args.prompt, return_tensors="pt")["input_ids"]
    if prompt.shape[1] == 0:
        raise UsageError(f"--prompt {args.prompt!r}: no tokens to start from")
    with torch.no_grad():
        start = time.perf_counter()
        out = model(prompt, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        tokens, start = [], time.perf_counter()
        for _ in range(args.new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token.item())
            out = model(token, cache=out.cache)
        decode = time.perf_counter() - start
    print(args.prompt + tokenizer.decode(tokens))
    print(f"prefill: {prompt.shape[1]} tokens in {prefill * 1e3:.1f} ms; decode: {args.new_tokens} tokens at "
          f"{args.new_tokens / decode:.1f} tokens/s (state: {out.cache.get_seq_length()} tokens absorbed, "
          "constant size)")


if __name__ == "__main__":
    main()
