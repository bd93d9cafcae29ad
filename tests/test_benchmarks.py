"""The benchmark scripts run end to end in their CPU modes (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_script, script_help

ROOT = Path(__file__).resolve().parents[1]


def strict_json(constant: str):
    raise AssertionError(f"{constant} in a results file: not JSON")


def test_generation_benchmark_tiny(tmp_path):
    out = tmp_path / "generation.json"
    variants = ("xlstm_hf", "xlstm_hf_eager", "transformers_xlstm", "llama2", "falcon_mamba")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--tiny", "--suites", "latency",
                          "prefill", "batch", "memory", "--variants", *variants, "--prompt-lengths", "0", "40",
                          "--new-tokens", "4", "--peer-new-tokens", "3", "--batch-size", "2", "--batch-prompt", "8",
                          "--memory-tokens", "6", "--ttft-samples", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text(), parse_constant=strict_json)["rows"]
    assert not [r for r in rows if "error" in r]
    assert all(r["peak_gib"] is None for r in rows)  # not measured on the CPU
    latency = {(r["variant"], r["prompt"]) for r in rows if r["suite"] == "latency"}
    assert latency == {(v, p) for v in variants for p in (0, 40)}
    assert {r["variant"] for r in rows if r["suite"] == "memory"} == {"xlstm_hf", "xlstm_hf_eager", "llama2"}
    assert all(r["decode_tok_s"] > 0 for r in rows if r["suite"] in ("latency", "batch"))
    assert all(r["ttft_samples"] == 2 and 0 < r["ttft_min_ms"] <= r["ttft_median_ms"]
               for r in rows if r["suite"] == "latency")
    assert "| system |" in run.stdout and all(
        f"| {r['ttft_ms']:.1f} (median {r['ttft_median_ms']:.1f}, min {r['ttft_min_ms']:.1f} of 2) |" in run.stdout
        for r in rows if r["suite"] == "latency")
    # The plots of those results: one PNG per figure (memory samples are taken on CUDA only: no memory plot here).
    plots = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plots.py"), str(out), "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert plots.returncode == 0, plots.stderr[-2000:]
    # ... written whole: no temporary file is left beside them.
    assert sorted(p.name for p in tmp_path.glob("*.png*")) == ["decode.png", "prefill.png", "ttft.png"]
    for name in ("ttft", "decode", "prefill"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generation_benchmark_refuses_bad_arguments():
    for option, value in (("--ttft-samples", "-1"), ("--ttft-pause", "-0.5"), ("--new-tokens", "0"),
                          ("--batch-size", "0"), ("--max-prompt", "xlstm_hf"), ("--max-prompt", "xlstm_hf=abc"),
                          ("--decode-max-prompt", "llama=2048")):
        code, _, err = run_script(ROOT / "benchmarks" / "generation.py", "--tiny", option, value)
        assert code == 2 and f"argument {option}: " in err and value in err, err
    code, _, err = run_script(ROOT / "benchmarks" / "generation.py", "--tiny", "--only-profile")
    assert code == 2 and "--only-profile needs --profile" in err, err


def test_a_variant_that_dies_after_some_rows_is_reported(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results

    child = tmp_path / "child.py"
    child.write_text('import json, os\nprint(json.dumps({"suite": "latency", "variant": "v"}), flush=True)\n'
                     "os.abort()  # as a compiler abort or the out-of-memory killer would end it\n")
    rows = results.run_isolated(str(child), [], "v")
    assert rows[0] == {"suite": "latency", "variant": "v"} and rows[1]["suite"] == "all" and "exit status" in rows[1][
        "error"]


def test_plots_take_the_median_of_a_point_measured_twice():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plots import by_variant

    rows = [dict(suite="latency", variant="a", prompt=p, ttft_ms=t) for p, t in ((2048, 3.0), (0, 1.0), (2048, 5.0),
                                                                                 (2048, 4.5))]
    assert by_variant(rows, "latency", "ttft_ms") == {"a": [(1, 1.0), (2048, 4.5)]}


def test_plots_take_the_median_of_prefill_bars_and_memory_points():
    """As the latency lines do: the bar of a shape measured in several files is not whichever file came last."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from plots import memory_curves, prefill_rates

    rows = [dict(suite="prefill", variant="a", batch=2, prompt=64, ttft_ms=t) for t in (32.0, 64.0, 128.0)]
    assert prefill_rates(rows) == {"a": {(2, 64): 2000.0}}  # of 4000, 2000 and 1000 tokens/s
    rows = [dict(suite="memory", variant="a", points=p) for p in ([[1, 1.0], [2, 3.0]], [[1, 2.0], [2, 1.0]],
                                                                   [[1, 1.5], [2, 2.0]])]
    assert memory_curves(rows) == {"a": [(1, 1.5), (2, 2.0)]}


def test_plots_refuse_files_they_cannot_plot(tmp_path):
    """A missing file, one that is not JSON, and results with no suite to plot: a usage error, not a traceback nor an
    exit 0 with nothing written."""
    truncated, training = tmp_path / "truncated.json", tmp_path / "training.json"
    truncated.write_text('{"info": {"device": "cpu"}, "rows": [')
    training.write_text(json.dumps(dict(info=dict(device="cpu"), args={}, rows=[dict(variant="v", setup="s")])))
    for path, reason in ((tmp_path / "nope.json", "cannot read"), (truncated, "is not JSON"),
                         (training, "nothing to plot")):
        code, _, err = run_script(ROOT / "benchmarks" / "plots.py", str(path), "--out", str(tmp_path / "img"))
        assert code == 2 and str(path) in err and reason in err, err
    assert not (tmp_path / "img").exists()


def test_plots_refuse_an_out_folder_they_cannot_make(tmp_path):
    """An --out that is a file, or below one, failed at the first PNG, after the results were read."""
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps(dict(info=dict(device="cpu"), args={}, rows=[
        dict(variant="v", suite="latency", prompt=16, ttft_ms=1.0, decode_tok_s=2.0)])))
    afile = tmp_path / "afile"
    afile.write_text("")
    for out, reason in ((afile, "is a file, not a folder"), (afile / "img", "is not a folder that can be written")):
        code, _, err = run_script(ROOT / "benchmarks" / "plots.py", str(latency), "--out", str(out))
        assert code == 2 and "argument --out: " in err and reason in err, err
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import plots

    plots.main([str(latency), "--out", str(tmp_path / "new" / "img")])  # a folder that can be made is made
    assert (tmp_path / "new" / "img" / "ttft.png").exists()


def test_plots_titles_say_what_the_json_measured(tmp_path, monkeypatch):
    """A --tiny run's plots say tiny float32 configs and the prefill batch it measured, not the 7B's."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import plots

    rows = [dict(suite="prefill", variant="a", batch=2, prompt=64, ttft_ms=10.0),
            dict(suite="latency", variant="a", prompt=8, ttft_ms=5.0, decode_tok_s=100.0)]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(dict(info=dict(device="cpu"), args=dict(tiny=True), rows=rows)))
    titles = {}
    monkeypatch.setattr(plots, "save", lambda fig, ax, out: titles.update({Path(out).name: ax.get_title()}))
    plots.main([str(path), "--out", str(tmp_path)])
    assert set(titles) == {"ttft.png", "decode.png", "prefill.png"}
    assert all("tiny configs, float32 (cpu)" in title and "7B" not in title for title in titles.values()), titles
    assert "128 tokens a batch" in titles["prefill.png"], titles


def test_benchmarks_check_out_before_the_run(tmp_path):
    """An --out that cannot be written (below a file, or an existing folder) was found at the write, after the run."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import results

    afile = tmp_path / "afile"
    afile.write_text("")
    for script in ("generation.py", "training.py", "slstm.py", "mlstm_cell.py", "decode_layer.py", "gemm_power.py"):
        for out in (afile / "out.json", tmp_path):
            code, _, err = run_script(ROOT / "benchmarks" / script, "--out", str(out))
            assert code == 2 and "argument --out: " in err and str(out) in err, (script, err)
    new = str(tmp_path / "new" / "out.json")
    assert results.file_to_write(new) == new  # its folder is made at the write


def test_prefill_memory_in_half_precision(tmp_path):
    """The CPU's peak resident set counted a float32 copy of the model made before its cast: a bf16 prefill's growth
    read 0."""
    script = ROOT / "benchmarks" / "prefill_memory.py"
    run = subprocess.run([sys.executable, str(script), "--lengths", "2048", "--segment", "1024", "--dtype", "bfloat16"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    length, seconds, peak, growth = run.stdout.splitlines()[-1].split()
    assert length == "2048" and float(growth) > 0.005, run.stdout


def test_prefill_memory_refuses_a_device_this_machine_lacks():
    """A bad --device was reported against the first prompt length, from its child process."""
    devices = ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in devices:
        code, _, err = run_script(ROOT / "benchmarks" / "prefill_memory.py", "--lengths", "64", "--device", device)
        assert code == 2 and f"argument --device: {device}" in err.replace("'", ""), err


def test_prefill_memory_names_the_prompt_length_that_failed(monkeypatch, capsys):
    """A length whose process fails (out of memory, say) ends the run with its last error line, not a JSON
    traceback from reading the failed process's output."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import prefill_memory

    def failing(command, **kwargs):
        length = int(command[command.index("--one") + 1])
        error = "torch.OutOfMemoryError: CUDA out of memory" if length > 64 else ""
        return subprocess.CompletedProcess(command, 1 if error else 0, stdout=json.dumps(dict(
            length=length, seconds=0.5, peak_gib=1.0, growth_gib=0.1)), stderr=f"Traceback ...\n{error}\n")

    monkeypatch.setattr(prefill_memory.subprocess, "run", failing)
    with pytest.raises(SystemExit) as exited:
        prefill_memory.main(["--lengths", "64", "128", "256"])
    assert str(exited.value) == "prompt of 128 tokens: torch.OutOfMemoryError: CUDA out of memory"
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "64"  # the lengths before it are reported


def test_decode_layer_refuses_sizes_below_one():
    for option, value in (("--batches", "0"), ("--batches", "-3"), ("--layers", "0")):
        code, _, err = run_script(ROOT / "benchmarks" / "decode_layer.py", option, value)
        assert code == 2 and f"argument {option}: must be at least 1, got {value}" in err, err


def test_benchmarks_have_help():
    for script in ("generation.py", "mlstm_cell.py", "decode_layer.py", "prefill_memory.py", "training.py", "plots.py",
                   "slstm.py", "gemm_power.py"):
        assert "usage:" in script_help(ROOT / "benchmarks" / script), script


def test_training_benchmark_tiny(tmp_path):
    out = tmp_path / "training.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "training.py"), "--tiny", "--seq-len", "32",
                          "--steps", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(r["variant"], r["setup"]) for r in rows} == {(v, s) for v in ("xlstm_hf", "transformers_xlstm")
                                                          for s in ("full_1.3b", "lora_7b")}
    assert all(r["tok_s"] > 0 for r in rows)
    # LoRA trains a small fraction of the weights; the full setup all of them.
    by_setup = {r["setup"]: r["trained_params"] for r in rows if r["variant"] == "xlstm_hf"}
    assert by_setup["lora_7b"] < by_setup["full_1.3b"] / 5


def test_slstm_benchmark_tiny(tmp_path):
    pytest.importorskip("xlstm")  # the reference is the package's float64 cell
    out = tmp_path / "slstm.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "slstm.py"), "--tiny", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"xlstm_hf_torch", "xlstm_vanilla"}  # the CPU runs the PyTorch variants only
    # Both against the package's float64 vanilla backend, in bf16: the same recurrence, bf16's rounding apart.
    assert all(r["max_abs_err_vs_fp64"] < 3e-2 and r["ms"] > 0 and r["fwbw_ms"] > 0 for r in rows.values())


def test_slstm_tiny_keeps_the_sizes_given(tmp_path):
    """--tiny replaced explicit sizes with its own: it sets only those left out."""
    pytest.importorskip("xlstm")
    out = tmp_path / "slstm.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "slstm.py"), "--tiny", "--lengths", "5", "--batch",
                          "3", "--head-dim", "4", "--variants", "xlstm_hf_torch", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["S"], r["B"], r["NH"], r["DH"]) for r in rows] == [(5, 3, 2, 4)]  # the heads: --tiny's 2


def test_slstm_refuses_to_run_nothing_or_without_its_reference():
    """--tiny with CUDA variants only wrote empty results; without the xlstm package, a traceback."""
    script = ROOT / "benchmarks" / "slstm.py"
    code, _, err = run_script(script, "--tiny", "--variants", "xlstm_cuda", "xlstm_hf_triton")
    assert code == 2 and "--variants xlstm_cuda xlstm_hf_triton: none runs on the CPU" in err, err
    without_xlstm = (f"import runpy, sys; sys.modules['xlstm'] = None; sys.path.insert(0, {str(script.parent)!r}); "
                     f"sys.argv = ['slstm.py', '--tiny']; runpy.run_path({str(script)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", without_xlstm], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "needs the xlstm package" in run.stderr and "Traceback" not in run.stderr, run.stderr
