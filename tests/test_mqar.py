"""The MQAR experiment (`examples/mqar.py`): the generated data means what it should, and a smoke run writes its
report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from mqar import IGNORE, MQARData, best_runs, mqar_batch  # noqa: E402


def test_every_scored_label_is_the_value_stored_under_the_queried_key():
    data = mqar_batch(50, pairs=6, seq_len=40, vocab_size=64, generator=torch.Generator().manual_seed(0))
    for ids, labels in zip(data["input_ids"].tolist(), data["labels"].tolist()):
        store = dict(zip(ids[0:12:2], ids[1:12:2]))
        assert len(store) == 6 and all(0 < k < 32 <= v < 64 for k, v in store.items())  # distinct keys; ranges
        scored = [t for t, label in enumerate(labels) if label != IGNORE]
        assert scored == list(range(13, 24, 2))
        assert sorted(ids[t - 1] for t in scored) == sorted(store)  # every key is queried once
        assert all(labels[t] == store[ids[t - 1]] for t in scored)
        assert set(ids[24:]) == {0}  # padding after the queries, never scored


def run_mqar(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "mqar.py"), *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_smoke_run_writes_the_report_and_parallel_jobs_give_the_sequential_results(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    run = run_mqar("--tiny", "--jobs", "2", "--output-dir", str(tmp_path / "out"),
                   env={**os.environ, "TMPDIR": str(scratch)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(scratch.iterdir())  # each training's Trainer folder was left behind
    result = json.loads((tmp_path / "out" / "mqar.json").read_text())
    assert [(r["model"], r["pairs"]) for r in result["rows"]] == [(m, n) for n in (2, 4)
                                                                  for m in ("xlstm_1_1", "xlstm_1_0", "llama")]
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"]) and (tmp_path / "out" / "mqar.md").exists()
    # One process, two learning rates: its runs at the default rate are the parallel ones, its rows the best runs.
    alone = run_mqar("--tiny", "--models", "xlstm_1_0", "--lr", "3e-2", "1e-3", "--output-dir", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr[-3000:]
    sweep = json.loads((tmp_path / "alone" / "mqar.json").read_text())
    assert [r for r in sweep["runs"] if r["lr"] == 1e-3] == [r for r in result["rows"] if r["model"] == "xlstm_1_0"]
    for row in sweep["rows"]:
        tried = [r for r in sweep["runs"] if r["pairs"] == row["pairs"]]
        assert len(tried) == 2 and row["accuracy"] == max(r["accuracy"] for r in tried) and row in tried


def test_mixed_training_data_takes_every_n_in_turn():
    data = MQARData(6, (2, 5), seq_len=40, vocab_size=64, seed=0)
    scored = [int((data[index]["labels"] != IGNORE).sum()) for index in range(6)]
    assert scored == [2, 5, 2, 5, 2, 5]


def test_best_runs_picks_a_rate_per_training():
    def run(pairs, lr, accuracy, trained_on):
        return dict(model="m", pairs=pairs, lr=lr, accuracy=accuracy, trained_on=trained_on)

    accuracies = {(2, 1e-3): 0.5, (2, 3e-3): 0.7, (4, 1e-3): 0.9, (4, 3e-3): 0.1}
    per_n = [run(n, lr, accuracy, [n]) for (n, lr), accuracy in accuracies.items()]
    assert [(r["pairs"], r["lr"]) for r in best_runs(per_n)] == [(2, 3e-3), (4, 1e-3)]  # each N its own rate
    mixed = [run(n, lr, accuracy, [2, 4]) for (n, lr), accuracy in accuracies.items()]
    assert [(r["pairs"], r["lr"]) for r in best_runs(mixed)] == [(2, 1e-3), (4, 1e-3)]  # mean 0.7 against 0.4
    tie = [run(2, 1e-2, 0.5, [2]), run(2, 1e-3, 0.5, [2])]
    assert best_runs(tie) == tie[:1]  # the first of equals


def test_mixed_run_scores_one_model_per_rate_at_every_n(tmp_path):
    run = run_mqar("--tiny", "--mixed", "--models", "xlstm_1_0", "llama", "--lr", "3e-2", "1e-3", "--output-dir",
                   str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "mqar.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2 and all(r["trained_on"] == [2, 4] for r in result["runs"])
    for name in ("xlstm_1_0", "llama"):
        rows = [r for r in result["rows"] if r["model"] == name]
        assert sorted(r["pairs"] for r in rows) == [2, 4] and len({r["lr"] for r in rows}) == 1
        mean = {lr: sum(r["accuracy"] for r in result["runs"] if r["model"] == name and r["lr"] == lr) / 2
                for lr in (3e-2, 1e-3)}
        assert mean[rows[0]["lr"]] == max(mean.values())


def test_a_bad_argument_is_named(tmp_path):
    run = run_mqar("--pairs", "64", "--seq-len", "100", "--output-dir", str(tmp_path / "out"))
    assert run.returncode == 2 and "--seq-len" in run.stderr and not (tmp_path / "out").exists()
    run = run_mqar("--jobs", "0", "--output-dir", str(tmp_path / "out"))
    assert run.returncode == 2 and "--jobs" in run.stderr
