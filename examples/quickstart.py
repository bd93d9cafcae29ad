"""Quickstart, fully offline: build a small xLSTM, save it, load it back through AutoModelForCausalLM, then
prefill a prompt and continue it token by token from the recurrent state.

    python examples/quickstart.py --help
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

import xlstm_hf
from xlstm_hf import XLSTMConfig, XLSTMForCausalLM


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden-size", type=int, default=256, help="model width (default: 256)")
    parser.add_argument("--layers", type=int, default=4, help="number of mLSTM blocks (default: 4)")
    parser.add_argument("--heads", type=int, default=4, help="mLSTM heads (default: 4)")
    parser.add_argument("--prompt-length", type=int, default=128, help="prompt tokens (default: 128)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens to continue greedily (default: 32)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    config = XLSTMConfig(vocab_size=1024, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                         num_heads=args.heads)
    with tempfile.TemporaryDirectory() as path:
        XLSTMForCausalLM(config).save_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"xlstm_hf {xlstm_hf.__version__}: {type(model).__name__} with {n_params / 1e6:.1f}M parameters")

    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_length))
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
    print(f"prefill: {args.prompt_length} tokens in {prefill * 1e3:.1f} ms")
    print(f"decode: {args.new_tokens} tokens at {args.new_tokens / decode:.1f} tokens/s "
          f"(state: {out.cache.get_seq_length()} tokens absorbed, constant size)")
    print("greedy token ids:", tokens)


if __name__ == "__main__":
    main()
