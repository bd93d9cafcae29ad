"""The benchmark scripts run end to end in their CPU modes (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generation_benchmark_tiny(tmp_path):
    out = tmp_path / "generation.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--tiny", "--prompt-lengths",
                          "0", "40", "--new-tokens", "4", "--peer-new-tokens", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["variant"], r["prompt"]) for r in rows} == {
        (v, p) for v in ("xlstm_hf", "xlstm_hf_eager", "transformers_xlstm") for p in (0, 40)}
    assert all(r["decode_tok_s"] > 0 for r in rows) and "| system |" in run.stdout


def test_benchmarks_have_help():
    for script in ("generation.py", "kernels.py", "prefill_memory.py"):
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-1000:]
