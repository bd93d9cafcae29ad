"""How fast this GPU runs the 7B's prefill GEMMs when it must sustain them, and what holds it back: each GEMM in a loop
for a few seconds, on random data (the benchmarks' setting) and on zeros (which toggle no bits and draw less power),
with nvidia-smi sampled every 50 ms for the SM clock, the board power and the clock-throttle reasons.

The rate is compared with the tensor cores' peak at the measured clock: 4,096 dense bf16 FLOP a clock per SM on
Hopper (989 TFLOP/s at 1,830 MHz on 132 SMs). A prefill spends ~87% of its GPU time in these GEMMs
(`benchmarks/generation.py --profile`), so its time is bounded by their rate at the clock the power cap leaves.

    python benchmarks/gemm_power.py --help
    python benchmarks/gemm_power.py --rows 2048 16384 --seconds 3 --out results/gemm_power.json
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import threading
import time
from collections import Counter

import results
import torch
import torch.nn.functional as F

from xlstm_hf.arguments import number_in, positive_int

FLOP_PER_CLOCK_PER_SM = 4096  # dense bf16 tensor-core FLOP, Hopper
# clock_event_reasons bit 2 (0x4) is "SW power cap".
FIELDS = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gemms", nargs="+", default=["up", "projections"], choices=list(results.seven_b_gemms()))
    parser.add_argument("--rows", type=positive_int, nargs="+", default=[2048, 16384], help="tokens a GEMM (M)")
    parser.add_argument("--seconds", type=number_in(1.0), default=3.0,
                        help="how long each loop runs (at least 1: on the H200 a 0.5 s loop got no telemetry sample)")
    parser.add_argument("--out", type=results.file_to_write, help="write the results as JSON here")
    return parser.parse_args(argv)


def device_uuid() -> str:
    """nvidia-smi's name for torch's current GPU: its index there counts every GPU, torch's only the visible ones."""
    return f"GPU-{torch.cuda.get_device_properties(torch.cuda.current_device()).uuid}"


class Telemetry:
    """nvidia-smi in the background, one sample every 50 ms; `window(t0, t1)` summarises the samples in between."""

    def __init__(self):
        self.samples: list[tuple[float, str]] = []
        self.process = subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits",
                                         "-lms", "50", "-i", device_uuid()],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.samples.append((time.perf_counter(), line))

    def window(self, t0: float, t1: float) -> dict:
        rows = []
        for t, line in self.samples:
            parts = [p.strip() for p in line.split(",")]
            if t0 <= t <= t1 and len(parts) == 4:
                try:
                    rows.append((float(parts[0]), float(parts[1]), float(parts[2]), parts[3]))
                except ValueError:  # "[N/A]" on some boards
                    continue
        if not rows:
            return {}
        mean = lambda column: round(sum(r[column] for r in rows) / len(rows), 1)  # noqa: E731
        summary = dict(sm_mhz=mean(0), sm_mhz_min=min(r[0] for r in rows), temperature_c=rows[-1][2],
                       throttle_reasons=Counter(r[3] for r in rows).most_common(1)[0][0], samples=len(rows))
        if max(r[1] for r in rows) > 0:  # some machines' nvidia-smi reports 0 W throughout: no reading, then
            summary.update(power_w=mean(1), power_w_max=max(r[1] for r in rows))
        return summary

    def close(self) -> None:
        self.process.terminate()


def loop(fn, seconds: float) -> tuple[float, float, float]:
    """Run `fn` back to back for about `seconds`; returns (seconds a call, loop start, loop end)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    reps = max(3, int(seconds / max(time.perf_counter() - start, 1e-5)))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    end = time.perf_counter()
    return (end - start) / reps, start, end


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gemm_power.py needs a CUDA GPU")
    info = results.environment()
    print(json.dumps(info))
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    telemetry = Telemetry()
    time.sleep(1.0)  # the first samples
    rows, shapes = [], results.seven_b_gemms()
    try:
        for name in args.gemms:
            out_features, in_features = shapes[name]
            for M in args.rows:
                for data in ("random", "zeros"):
                    x = torch.randn(M, in_features, device="cuda", dtype=torch.bfloat16)
                    w = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16) * 0.02
                    if data == "zeros":
                        x.zero_(), w.zero_()
                    seconds, start, end = loop(functools.partial(F.linear, x, w), args.seconds)
                    # The first half second lets the clock settle to what the loop sustains.
                    row = dict(gemm=name, M=M, N=out_features, K=in_features, data=data, ms=round(1e3 * seconds, 4),
                               tflops=round(2 * M * out_features * in_features / seconds / 1e12, 1),
                               **telemetry.window(start + 0.5, end))
                    if "sm_mhz" in row:
                        peak = FLOP_PER_CLOCK_PER_SM * sms * row["sm_mhz"] * 1e6 / 1e12
                        row.update(peak_tflops_at_clock=round(peak, 1), of_peak_at_clock=round(row["tflops"] / peak, 3))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    del x, w
    finally:
        telemetry.close()
    results.write(args.out, info, args, rows)
    print("\n| GEMM | M | data | TFLOP/s | SM MHz | W | of the peak at that clock | throttle reasons |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gemm']} | {r['M']} | {r['data']} | {r['tflops']:.0f} | {r.get('sm_mhz', '-')} | "
              f"{r.get('power_w', '-')} | {r.get('of_peak_at_clock', '-')} | {r.get('throttle_reasons', '-')} |")


if __name__ == "__main__":
    main()
