"""The paper's inference benchmark through `model.generate` (greedy, min_new_tokens = max_new_tokens), side by side:
xlstm_hf (decode replayed from a CUDA graph, the default, and eager), transformers' own xLSTM, Llama-2-7B and
Llama-3.1-8B (static cache + torch.compile, transformers' fastest generate path) and FalconMamba-7B.
`xlstm_hf_fused` is the same model in the fused weight layout (`xlstm-hf convert --weight-mode fused`);
`transformers_xlstm_mlstm_kernels` is transformers' xLSTM on the `xlstm` package's Triton kernels (limit_chunk,
sequence and step), `transformers_xlstm` on its native PyTorch ones. All models are
built from their published configs with random bf16 weights: speed does not depend on the values.

Suites (`--suites`):
  latency   time to first token and decode tokens/s against the prompt length, with peak GPU memory
  prefill   prefill tokens/s with 65,536 tokens a batch (32 x 2K, 8 x 8K, 2 x 32K)
  batch     decode tokens/s of a batch of 32 after 512-token prompts
  memory    peak GPU memory while one sequence generates `--memory-tokens` tokens

    python benchmarks/generation.py --help
    python benchmarks/generation.py --suites latency --prompt-lengths 0 2048 16384 131072 --out results/gen.json
    python benchmarks/plots.py results/gen.json --out docs/img      # the PNG plots (needs matplotlib)

A prompt length of 0 means one BOS token. `--tiny` runs small configs on the CPU (no timing claims; for CI).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import time

import results
import torch

from xlstm_hf.arguments import at_least, non_negative_float, positive_int

VARIANTS = ["xlstm_hf", "xlstm_hf_fused", "xlstm_hf_eager", "transformers_xlstm", "transformers_xlstm_mlstm_kernels",
            "llama2", "llama31", "falcon_mamba"]
# transformers' xLSTM on the `xlstm` package's mlstm_kernels (as NX-AI's config names them; needs `xlstm` installed)
MLSTM_KERNELS = dict(chunkwise_kernel="chunkwise--triton_limit_chunk", sequence_kernel="native_sequence__triton",
                     step_kernel="triton")
PREFILL_SHAPES = [(32, 2048), (8, 8192), (2, 32768)]

# Published configs (the fields that set size and speed); --tiny shrinks them.
CONFIGS = {
    "llama2": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama31": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)),
    "falcon_mamba": dict(hidden_size=4096, num_hidden_layers=64, state_size=16, expand=16 // 8, conv_kernel=4,
                         vocab_size=65024, use_mambapy=False),
}
TINY = dict(hidden_size=128, num_hidden_layers=2, vocab_size=1024)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=["latency"], choices=["latency", "prefill", "batch", "memory"])
    parser.add_argument("--variants", nargs="+", default=["xlstm_hf", "xlstm_hf_eager", "transformers_xlstm"],
                        choices=VARIANTS)
    parser.add_argument("--prompt-lengths", type=at_least(0), nargs="+", default=[0, 2048, 16384])
    parser.add_argument("--max-prompt", type=variant_tokens, nargs="*", default=[], metavar="VARIANT=TOKENS",
                        help="skip longer prompts for a variant, e.g. llama2=16384 (memory or time)")
    parser.add_argument("--decode-max-prompt", type=variant_tokens, nargs="*", default=[], metavar="VARIANT=TOKENS",
                        help="time only the first token for longer prompts of a variant, e.g. llama2=2048 (each new "
                             "static-cache length recompiles Llama's decode step)")
    parser.add_argument("--new-tokens", type=positive_int, default=128)
    parser.add_argument("--ttft-samples", type=at_least(0), default=0, metavar="N",
                        help="latency suite: also time N more first tokens (generate with one new token) at each "
                             "prompt length and report their median and minimum beside the first sample; one sample "
                             "swings with the host's and the GPU's clocks")
    parser.add_argument("--ttft-pause", type=non_negative_float, default=0.0, metavar="SECONDS",
                        help="idle time before each of the --ttft-samples calls (after a pause the host queues "
                             "slower; back to back the GPU runs at the clock its power cap leaves)")
    parser.add_argument("--peer-new-tokens", type=positive_int, default=16,
                        help="new tokens for the slow peers (transformers_xlstm*, falcon_mamba)")
    parser.add_argument("--batch-prompt", type=positive_int, default=512, help="prompt length of the batch suite")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="batch of the batch suite")
    parser.add_argument("--memory-tokens", type=positive_int, default=16384,
                        help="tokens generated by the memory suite")
    parser.add_argument("--profile", type=positive_int, metavar="TOKENS",
                        help="also print the GPU profile of each variant's prefill of a TOKENS-long prompt and of "
                             "decode steps; for xlstm_hf on CUDA, the host's share too (launch times, and whether "
                             "the host or the GPU paces the prefill, block by block)")
    parser.add_argument("--only-profile", action="store_true", help="skip the suites (with --profile)")
    parser.add_argument("--tiny", action="store_true", help="small configs on the CPU (no timing claims)")
    parser.add_argument("--out", type=results.file_to_write, help="write the results as JSON here")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_args(argv)
    if args.only_profile and args.profile is None:
        parser.error("--only-profile needs --profile TOKENS")
    return args


def variant_tokens(text: str) -> tuple[str, int]:
    """An argparse type: VARIANT=TOKENS, a variant of VARIANTS and a token count."""
    variant, _, tokens = text.partition("=")
    if variant not in VARIANTS or not tokens.isdigit():
        raise argparse.ArgumentTypeError(f"expected VARIANT=TOKENS, a variant of {', '.join(VARIANTS)}; got {text!r}")
    return variant, int(tokens)


def build(variant: str, tiny: bool, device: str):
    """The model of `variant`, its weights created directly in their dtype on `device` (no fp32 copy of a 7B)."""
    import transformers

    with results.made_in(torch.float32 if tiny else torch.bfloat16, device):
        if variant.startswith("xlstm_hf"):
            from xlstm_hf import XLSTMConfig, XLSTMForCausalLM

            size = dict(TINY, num_heads=2) if tiny else {}
            model = XLSTMForCausalLM(XLSTMConfig(**size, weight_mode="fused" if variant.endswith("fused") else
                                                 "single"))
            model.cuda_graphs = variant != "xlstm_hf_eager"
        elif variant.startswith("transformers_xlstm"):
            kernels = MLSTM_KERNELS if variant.endswith("mlstm_kernels") and not tiny else {}
            model = transformers.xLSTMForCausalLM(transformers.xLSTMConfig(
                **(dict(TINY, num_heads=2) if tiny else {}), **kernels))
        elif variant == "falcon_mamba":
            size = dict(CONFIGS[variant], **(TINY if tiny else {}))
            model = transformers.FalconMambaForCausalLM(transformers.FalconMambaConfig(**size))
        else:
            size = dict(CONFIGS[variant], **(dict(TINY, num_attention_heads=4, num_key_value_heads=2,
                                                  intermediate_size=256) if tiny else {}))
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**size, attn_implementation="sdpa"))
    model.generation_config.pad_token_id = 0
    return model.eval()


class Probe:
    """A streamer that timestamps the first and the last generated token and samples peak GPU memory every `every`
    tokens. generate() hands each token to the streamer on the host, after the step that made it has finished."""

    def __init__(self, every: int = 0, cuda: bool = False):
        self.every, self.cuda, self.count, self.times, self.points = every, cuda, -1, [], []

    def put(self, value) -> None:
        self.count += 1  # the first put() is the prompt
        if self.count:
            self.times = [self.times[0] if self.times else time.perf_counter(), time.perf_counter()]
        if self.cuda and self.every and self.count and self.count % self.every == 0:
            self.points.append((self.count, torch.cuda.max_memory_allocated() / 2**30))

    def end(self) -> None:
        pass


class Runner:
    """Runs `model.generate` for one variant. Llama runs on a static cache of prompt + new tokens (so generate
    compiles its decode step, once per cache shape)."""

    def __init__(self, variant: str, model, device: str, ttft_samples: int = 0, ttft_pause: float = 0.0):
        self.variant, self.model, self.device = variant, model, device
        self.static = variant.startswith("llama")
        self.ttft_samples, self.ttft_pause = ttft_samples, ttft_pause

    def generate(self, ids: torch.Tensor, new_tokens: int, memory_every: int = 0) -> dict:
        """Time to first token (ms), decode tokens/s (all rows), total seconds, peak GPU memory (GiB) and the
        memory samples of one generate call."""
        cuda = self.device == "cuda"
        probe = Probe(memory_every, cuda)
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=probe)
        if self.static:
            from transformers import StaticCache

            kwargs["past_key_values"] = StaticCache(self.model.config, max_cache_len=ids.shape[1] + new_tokens)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.no_grad():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        first, last = probe.times
        decode = ids.shape[0] * (new_tokens - 1) / (last - first) if new_tokens > 1 else float("nan")
        return dict(ttft_ms=1000 * (first - start), decode_tok_s=decode, seconds=seconds,
                    peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"), points=probe.points)

    def first_token_samples(self, ids: torch.Tensor) -> dict:
        """Median and minimum TTFT (ms) of `ttft_samples` generate calls with one new token, each after `ttft_pause`
        seconds of idling."""
        samples = []
        for _ in range(self.ttft_samples):
            time.sleep(self.ttft_pause)
            samples.append(self.generate(ids, 1)["ttft_ms"])
        return dict(ttft_median_ms=statistics.median(samples), ttft_min_ms=min(samples), ttft_samples=len(samples),
                    ttft_pause_s=self.ttft_pause)

    def ids(self, batch: int, length: int) -> torch.Tensor:
        return torch.randint(3, self.model.config.vocab_size, (batch, max(length, 1)), device=self.device)

    def measure(self, suite: str, batch: int, length: int, new_tokens: int, memory_every: int = 0, *keep: str) -> None:
        """One generate call, printed as a result row (or an out-of-memory row) for `results.run_isolated`."""
        row = dict(suite=suite, variant=self.variant, batch=batch, prompt=length, new_tokens=new_tokens)
        try:
            ids = self.ids(batch, length)
            if self.device == "cuda":  # a first call at a new shape builds kernels (Triton, torch.compile): untimed
                self.generate(ids, new_tokens if self.static else min(new_tokens, 2))  # static: same cache shape
            result = self.generate(ids, new_tokens, memory_every)
            row.update({key: result[key] for key in ("ttft_ms", "decode_tok_s", "seconds", "peak_gib", *keep)})
            if suite == "latency" and self.ttft_samples:
                row.update(self.first_token_samples(ids))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            row["error"] = "out of memory"
        print(json.dumps(row), flush=True)


def profile(run: Runner, length: int, new_tokens: int = 33) -> None:
    """Where the GPU time goes: the top operations of a prefill of `length` tokens (generate(max_new_tokens=1)),
    then of `new_tokens` decode steps after a short prompt (kernels replayed from CUDA graphs show up too)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for name, ids, tokens in (("prefill", run.ids(1, length), 1), ("decode", run.ids(1, 16), new_tokens)):
        run.generate(ids, tokens)
        with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            result = run.generate(ids, tokens)
        events = prof.key_averages()
        kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"profile {run.variant} {name}: {ids.shape[1]} prompt tokens, {tokens} new, "
              f"{result['seconds'] * 1000:.1f} ms (profiled), {kernels} GPU kernels")
        print(events.table(sort_by="self_device_time_total", row_limit=25))
    if run.variant.startswith("xlstm_hf") and run.device == "cuda":
        host_overheads(run, length)
        host_lead(run, length)


def host_overheads(run: Runner, length: int, steps: int = 100) -> None:
    """Host against GPU outside generate(): how long a prefill of `length` tokens takes the host to queue and the
    GPU to finish (equal: the launches bound it); per-token decode time with forward calls back to back (the GPU's
    pace, host work overlapped) and with a synchronisation after each (host and GPU in series)."""
    model = run.model
    with torch.no_grad():
        prompt = run.ids(1, length)
        for _ in range(2):  # the first call builds
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(prompt, logits_to_keep=1)
            queued = time.perf_counter()
            torch.cuda.synchronize()
        print(f"prefill {run.variant}: {length} tokens queued in {1000 * (queued - start):.1f} ms, done in "
              f"{1000 * (time.perf_counter() - start):.1f} ms")
        with cProfile.Profile() as host:
            seconds = run.generate(prompt, 1)["seconds"]
        print(f"generate {run.variant}: {length} tokens, 1 new, {1000 * seconds:.1f} ms; host time by function:")
        pstats.Stats(host).sort_stats("tottime").print_stats(12)
        ids = run.ids(1, 16)
        cache = model(ids).cache
        token = ids[:, -1:]
        for sync in (False, True):
            model(token, cache=cache)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                model(token, cache=cache)
                if sync:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            print(f"decode {run.variant}: {1000 * (time.perf_counter() - start) / steps:.2f} ms a token, forward "
                  f"calls {'synchronised each step' if sync else 'back to back'}")


def host_lead(run: Runner, length: int, runs: int = 3) -> None:
    """Who paces a prefill inside generate(), block by block: a CUDA event at the start of each block records when
    the GPU got there, against when the host began to queue that block. A lead that stays near zero means the GPU
    waits for the host's launches; a growing one, that the host runs ahead and the GPU sets the pace."""
    marks = []

    def mark(block, inputs):
        if inputs[0].shape[1] > 1:  # the prefill's blocks, not the decode steps'
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append((time.perf_counter(), event))

    hooks = [block.register_forward_pre_hook(mark) for block in run.model.backbone.blocks]
    prompt = run.ids(1, length)
    try:
        for attempt in range(runs + 1):  # the first call builds
            marks.clear()
            torch.cuda.synchronize()
            start, host_start = torch.cuda.Event(enable_timing=True), time.perf_counter()
            start.record()
            run.generate(prompt, 1)
            if attempt == 0:
                continue
            gpu = [start.elapsed_time(event) for _, event in marks]
            lead = [g - 1000 * (t - host_start) for g, (t, _) in zip(gpu, marks)]
            blocks = sorted(b - a for a, b in zip(gpu, gpu[1:]))
            print(f"host lead {run.variant}, {length} tokens: the GPU reached block 0 at {gpu[0]:.1f} ms; GPU ms a "
                  f"block {blocks[0]:.2f} / {blocks[len(blocks) // 2]:.2f} / {blocks[-1]:.2f} (min / median / max); "
                  f"host lead {min(lead):.2f} / {sorted(lead)[len(lead) // 2]:.2f} / {max(lead):.2f} ms")
    finally:
        for hook in hooks:
            hook.remove()


def run_variant(args, variant: str, device: str) -> None:
    """Every suite for `variant` (each row printed as measured, so a later suite's failure loses none)."""
    model = build(variant, args.tiny, device)
    slow = variant.startswith("transformers_xlstm") or variant == "falcon_mamba"
    new_tokens = args.peer_new_tokens if slow else args.new_tokens
    limits, decode_limits = dict(args.max_prompt), dict(args.decode_max_prompt)
    lengths = [n for n in args.prompt_lengths if n <= limits.get(variant, n)]
    run = Runner(variant, model, device, args.ttft_samples, args.ttft_pause)
    run.generate(run.ids(1, 64), 8)  # warm-up: Triton builds, CUDA graph capture, torch.compile
    if args.only_profile:
        profile(run, args.profile)
        return
    if "latency" in args.suites:
        for length in lengths:
            run.measure("latency", 1, length, new_tokens if length <= decode_limits.get(variant, length) else 1)
    if "prefill" in args.suites:
        shapes = [(2, 64)] if args.tiny else PREFILL_SHAPES
        for batch, length in shapes:
            run.measure("prefill", batch, length, 1)
    # Memory before the batch suite: the batch's decode graph keeps its states (4 GiB for 32 rows of the 7B) for
    # later calls of that batch size, and one sequence's peak would count them.
    if "memory" in args.suites and not slow:
        run.measure("memory", 1, 0, args.memory_tokens, max(args.memory_tokens // 16, 1), "points")
    if "batch" in args.suites:
        run.measure("batch", args.batch_size, args.batch_prompt, new_tokens)
    if args.profile:
        profile(run, args.profile)


def sampled_ttft(row: dict) -> str:
    """The suffix " (median M, min m of N)" of a latency row's TTFT cell with --ttft-samples, else an empty string."""
    if "ttft_median_ms" not in row:
        return ""
    return f" (median {row['ttft_median_ms']:.1f}, min {row['ttft_min_ms']:.1f} of {row['ttft_samples']})"


def table(rows: list[dict]) -> str:
    """Markdown tables, one per suite."""
    out = []
    for suite, header, cells in (
        ("latency", "| system | prompt | TTFT ms | decode tok/s | peak GiB |",
         lambda r: f"{r['prompt']} | {r['ttft_ms']:.1f}{sampled_ttft(r)} | {r['decode_tok_s']:.1f} | "
                   f"{r['peak_gib']:.2f}"),
        ("prefill", "| system | batch x prompt | prefill tok/s | peak GiB |",
         lambda r: f"{r['batch']} x {r['prompt']} | {r['batch'] * r['prompt'] * 1000 / r['ttft_ms']:.0f} | "
                   f"{r['peak_gib']:.2f}"),
        ("batch", "| system | batch x prompt | decode tok/s | peak GiB |",
         lambda r: f"{r['batch']} x {r['prompt']} | {r['decode_tok_s']:.0f} | {r['peak_gib']:.2f}"),
        ("memory", "| system | generated tokens | seconds | peak GiB |",
         lambda r: f"{r['new_tokens']} | {r['seconds']:.1f} | {r['peak_gib']:.2f}"),
    ):
        chosen = [r for r in rows if r["suite"] == suite]
        if chosen:
            out += ["", header, "|" + "---|" * (header.count("|") - 1)]
            out += [f"| {r['variant']} | " + (r["error"] if "error" in r else cells(r)) + " |" for r in chosen]
    out += [f"\n{r['variant']} failed: {r['error']}" for r in rows if r["suite"] == "all"]
    return "\n".join(out)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/generation.py needs a CUDA GPU (or --tiny for the CPU)")
    if args.only:
        results.run_child(lambda: run_variant(args, args.only, device), suite="all", variant=args.only)
        return
    info = results.environment()
    print(json.dumps(info), flush=True)
    rows = [row for variant in args.variants for row in results.run_isolated(__file__, argv, variant)]
    print(table(rows))
    results.write(args.out, info, args, rows)


if __name__ == "__main__":
    main()
