"""The `xlstm-hf` command: generate, convert, export, bench, eval.

    xlstm-hf --help
    xlstm-hf generate "def fibonacci(n):"            # the model shipped with xlstm_hf, offline
    xlstm-hf generate "def fibonacci(n):" --model PATH
    xlstm-hf convert SRC DST --weight-mode fused --dtype bfloat16
    xlstm-hf export --remote-code DIR --model PATH
    xlstm-hf bench --model PATH
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .arguments import (bos_kwargs, device, folder_to_save_into, load_pretrained, non_negative_float, number_in,
                        positive_int)

DTYPES = ("float32", "bfloat16", "float16")


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def shard_size(text: str) -> str:
    """An argparse type: a positive size such as 5GB or 500MB (checked here rather than after the conversion)."""
    from transformers.utils.hub import convert_file_size_to_int

    try:
        positive = convert_file_size_to_int(text) > 0
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not positive:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return text


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or Hub id (default: the small code model shipped with "
                                        "xlstm_hf, trained on the Python standard library; runs offline)")
    parser.add_argument("--device", type=device, default="cuda" if _cuda() else "cpu",
                        help="cpu or cuda (default: best there is)")
    parser.add_argument("--dtype", choices=DTYPES,
                        help="weights' dtype (default: float32 on the CPU, the checkpoint's elsewhere)")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _load_model(name: str, base_only: bool = False, **kwargs):
    """AutoModelForCausalLM.from_pretrained(name), failing with an error that names --model. With `base_only`, the
    xLSTM model of a local folder without the LoRA adapters saved beside it (`conversion.load_base_model`)."""
    from transformers import AutoModelForCausalLM

    import xlstm_hf  # noqa: F401  (registers our classes)

    path = Path(name)
    if (path.exists() or name.startswith((".", "/"))) and not (path / "config.json").is_file():
        raise CommandError(f"--model {name}: no config.json there")
    if not base_only:
        return load_pretrained(AutoModelForCausalLM, "--model", name, **kwargs)
    from .conversion import load_base_model

    try:
        return load_base_model(path, kwargs.get("dtype"))
    except (OSError, ValueError, RuntimeError) as error:
        raise CommandError(f"--model {name}: {error}") from None


# What a folder holds where it has a tokenizer (one of them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _model_name(args) -> str:
    """--model, or the model shipped with xlstm_hf."""
    if args.model is None:
        import xlstm_hf

        args.model = str(xlstm_hf.default_model_path())
    return args.model


def _load(args):
    import torch

    # bf16 matmuls are slow on most CPUs: compute in float32 there unless asked otherwise.
    dtype = getattr(torch, args.dtype) if args.dtype else torch.float32 if args.device == "cpu" else "auto"
    return _load_model(_model_name(args), dtype=dtype).to(args.device).eval()


def _load_tokenizer(name: str):
    """The tokenizer of `--model`, adding BOS where the checkpoint's config asks for it (`bos_kwargs`)."""
    from transformers import AutoConfig, AutoTokenizer

    import xlstm_hf  # noqa: F401  (registers our configs)

    path = Path(name)
    if path.is_dir() and not any((path / file).is_file() for file in TOKENIZER_FILES):
        raise CommandError(f"--model {name}: no tokenizer there ({', '.join(TOKENIZER_FILES)})")
    config = load_pretrained(AutoConfig, "--model", name)
    return load_pretrained(AutoTokenizer, "--model", name, **bos_kwargs(config))


def cmd_generate(args) -> None:
    import torch

    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8
        raise CommandError("the prompt is not valid UTF-8") from None
    if args.top_p is not None and args.temperature == 0:
        raise CommandError("--top-p samples, and --temperature 0 (the default) is greedy: give a --temperature")
    tokenizer = _load_tokenizer(_model_name(args))  # before the model, whose weights take longer
    inputs = tokenizer(args.prompt, return_tensors="pt").to(args.device)
    if inputs["input_ids"].shape[1] == 0:
        raise CommandError("the prompt is empty after tokenization")
    model = _load(args)
    sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p or 0.95) if args.temperature else \
        dict(do_sample=False, temperature=None, top_p=None)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **sampling)
    seconds = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1]:]
    # The completion as the whole sequence decodes it, after the prompt's part (as transformers' pipeline does): a
    # word-level tokenizer puts the space between the prompt and its first new word only there.
    text, prompt = (tokenizer.decode(ids, skip_special_tokens=True) for ids in (out[0], inputs["input_ids"][0]))
    print(args.prompt + text[len(prompt):])
    print(f"[{len(new)} tokens in {seconds:.2f} s: {len(new) / seconds:.1f} tokens/s, {model.kernel_backend} kernels "
          f"on {args.device}]", file=sys.stderr)


def cmd_convert(args) -> None:
    import json
    import pickle

    import torch
    from safetensors import SafetensorError

    from .conversion import convert_checkpoint

    large_config = None
    if args.xlstm_large_config:
        try:
            large_config = json.loads(Path(args.xlstm_large_config).read_text())
        except (OSError, ValueError) as error:
            raise CommandError(f"--xlstm-large-config {args.xlstm_large_config}: {error}") from None
        if not isinstance(large_config, dict):
            raise CommandError(f"--xlstm-large-config {args.xlstm_large_config}: not a JSON object")
    elif not (Path(args.source) / "config.json").is_file():
        raise CommandError(f"{args.source}: not a checkpoint folder with a config.json (an xLSTMLarge state-dict file "
                           "needs --xlstm-large-config)")
    try:
        out = convert_checkpoint(args.source, args.destination, weight_mode=args.weight_mode,
                                 dtype=getattr(torch, args.dtype) if args.dtype else None,
                                 max_shard_size=args.max_shard_size, xlstm_large_config=large_config)
    except (pickle.UnpicklingError, EOFError, SafetensorError):  # torch.load(weights_only=True) or safetensors
        raise CommandError(f"{args.source}: not a state-dict file (safetensors, or tensors saved with torch.save)"
                           ) from None
    except (RuntimeError, ValueError) as error:  # load_state_dict's size mismatches, missing weights, a bad config
        if large_config is None:
            raise CommandError(f"{args.source}: {error}") from None
        raise CommandError(f"{args.source} with --xlstm-large-config {args.xlstm_large_config}: {error}") from None
    except OSError as error:  # no weights, a config.json that is not JSON, an unwritable destination: named in it
        raise CommandError(str(error)) from None
    print(f"wrote {out}")


def cmd_export(args) -> None:
    from .remote_code import export_remote_code

    local = args.model is not None and Path(args.model).is_dir()
    model = _load_model(args.model, base_only=local) if args.model else None
    out = export_remote_code(args.remote_code, model, args.model if local else None)
    print(f"wrote a remote-code bundle to {out}: load it with trust_remote_code=True")
    if args.model and not local:
        print(f"--model {args.model} is not a local folder: its tokenizer is not in the bundle (save it there with "
              "AutoTokenizer.from_pretrained(...).save_pretrained)", file=sys.stderr)


def cmd_bench(args) -> None:
    import torch

    model = _load(args)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.prompt_length), device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model(ids[:, :16])  # warm-up (kernel compilation)
        sync()
        start = time.perf_counter()
        # use_cache: a checkpoint saved with "use_cache": false (a Trainer's) would return no state to continue.
        out = model(ids, logits_to_keep=1, use_cache=True)
        sync()
        prefill = time.perf_counter() - start
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            out = model(token, cache=out.cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        sync()
        decode = time.perf_counter() - start
    print(f"prefill: {args.batch * args.prompt_length / prefill:,.0f} tokens/s ({prefill * 1e3:.1f} ms for "
          f"{args.batch} x {args.prompt_length}); decode: {args.batch * args.new_tokens / decode:,.1f} tokens/s "
          f"({model.kernel_backend} kernels on {args.device})")


def cmd_eval(args) -> None:
    try:
        from .eval import run_lm_eval_cli
    except ImportError as error:
        raise CommandError(f"lm-eval is not installed ({error}): pip install 'xlstm_hf[eval]'") from None
    try:
        run_lm_eval_cli(args.lm_eval_args)
    except OSError as error:  # a model that cannot be loaded (named in the message), an unwritable output path
        raise CommandError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlstm-hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="complete a prompt and print tokens/s")
    generate.add_argument("prompt")
    _add_model_args(generate)
    generate.add_argument("--max-new-tokens", type=positive_int, default=64)
    generate.add_argument("--temperature", type=non_negative_float, default=0.0, help="0: greedy (default)")
    generate.add_argument("--top-p", type=number_in(0, 1, low_open=True, high_open=False),
                          help="nucleus sampling, with a --temperature above 0 (default there: 0.95)")
    generate.set_defaults(run=cmd_generate)

    convert = commands.add_parser("convert", help="convert a checkpoint (layout, weight mode, dtype)")
    convert.add_argument("source", help="checkpoint folder (ours, transformers', NX-AI's) or an xLSTMLarge state dict")
    convert.add_argument("destination", type=folder_to_save_into, help="output folder (written atomically)")
    convert.add_argument("--weight-mode", choices=["single", "fused"])
    convert.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="default: bfloat16")
    convert.add_argument("--max-shard-size", type=shard_size, default="5GB")
    convert.add_argument("--xlstm-large-config", help="JSON of the xlstm package's xLSTMLargeConfig for SOURCE")
    convert.set_defaults(run=cmd_convert)

    export = commands.add_parser("export", help="write a remote-code bundle (runs without xlstm_hf installed)")
    export.add_argument("--remote-code", type=folder_to_save_into, required=True, metavar="DIR", help="output folder")
    export.add_argument("--model", help="also save this model there: weights, config and, from a local folder, its "
                        "other files (tokenizer, ...)")
    export.set_defaults(run=cmd_export)

    bench = commands.add_parser("bench", help="prefill and decode speed of a model")
    _add_model_args(bench)
    bench.add_argument("--prompt-length", type=positive_int, default=512)
    bench.add_argument("--new-tokens", type=positive_int, default=32)
    bench.add_argument("--batch", type=positive_int, default=1)
    bench.set_defaults(run=cmd_bench)

    evaluate = commands.add_parser("eval", help="lm-eval with this implementation (arguments go to lm-eval)",
                                   description="lm-eval's command line with `--model xlstm` chosen: `xlstm-hf eval "
                                   "run --help` lists lm-eval's options.")
    evaluate.add_argument("lm_eval_args", nargs=argparse.REMAINDER)
    evaluate.set_defaults(run=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"] and argv[1:2] not in (["-h"], ["--help"]):
        # Everything after `eval` belongs to lm-eval, options included (argparse would claim those).
        args = argparse.Namespace(command="eval", lm_eval_args=argv[1:], run=cmd_eval)
    else:
        args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CommandError, FileNotFoundError, FileExistsError, ValueError) as error:  # FileExistsError: a file as output
        print(f"xlstm-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
