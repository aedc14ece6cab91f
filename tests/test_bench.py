"`hvr-bench` (issue 16): each measurement runs through the command line at a tiny size and ends with one JSON line whose keys and types are the documented ones."
import json, os, subprocess, sys
import pytest
import torch
from hvr_nbs.bench import main

TINY = ["--steps", "2", "--repeats", "1", "--batch", "8", "--generations", "4", "--completion-length", "4", "--threads", "1"]
NUM = (int, float)


def _last_json(capsys, argv):
    "Run `hvr-bench argv` in this process; the record it returns, checked against the JSON line it printed last."
    threads = torch.get_num_threads()
    try: rec = main(argv)
    finally: torch.set_num_threads(threads)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(line) == rec
    return rec


def _check(rec, types):
    for k, t in types.items():
        assert k in rec, f"{rec.get('bench')}: no {k!r} in {sorted(rec)}"
        assert isinstance(rec[k], t) and not isinstance(rec[k], bool) or t is bool, (k, rec[k])
    assert rec["ratio_min"] <= rec["ratio"] <= rec["ratio_max"] and rec["ratio"] > 0
    gpu = torch.cuda.is_available()
    assert (rec["peak_mem_gib"] is not None) == gpu and rec["device"] == (torch.cuda.get_device_name(0) if gpu else "cpu")


RATIO = dict(bench=str, ratio=NUM, ratio_min=NUM, ratio_max=NUM, device=str, threads=int)
TRAIN = dict(RATIO, tokens_per_s=NUM, steps=int, repeats=int, batch=int, generations=int, completion_length=int, keep_rate=NUM, size=str, seed=int)


def test_grpo_overhead(capsys):
    rec = _last_json(capsys, ["grpo-overhead", *TINY])
    _check(rec, dict(TRAIN, ours_step_s=NUM, stock_step_s=NUM, same_loss=bool, same_update=bool))
    assert rec["bench"] == "grpo-overhead" and rec["steps"] == 2 and rec["threads"] == 1
    assert rec["same_loss"] and rec["same_update"]  # the same seed and settings train the same weights on both paths


def test_dapo(capsys):
    rec = _last_json(capsys, ["dapo", *TINY, "--keep-rate", "0.5"])
    _check(rec, dict(TRAIN, dapo_step_s=NUM, plain_step_s=NUM, goal=NUM, meets_goal=bool, rounds_per_step=NUM, kept_frac=NUM,
                     generated_groups_per_step=NUM))
    assert rec["keep_rate"] == 0.5 and 0 <= rec["kept_frac"] <= 1 and rec["rounds_per_step"] >= 0
    assert rec["generated_groups_per_step"] >= rec["batch"] // rec["generations"]  # at least the batch's groups


def test_eval(capsys):
    rec = _last_json(capsys, ["eval", "--n", "4", "--batch", "4", "--max-new-tokens", "4", "--repeats", "1", "--threads", "1"])
    _check(rec, dict(RATIO, n=int, batch_size=int, max_new_tokens=int, repeats=int, batched_s=NUM, single_s=NUM,
                     rows_per_s_batched=NUM, rows_per_s_single=NUM, tokens_per_s_batched=NUM, tokens_per_s_single=NUM, distinct=int))
    assert rec["bench"] == "eval" and rec["n"] == 4
    assert rec["agree"] is None if rec["distinct"] == 1 else isinstance(rec["agree"], float)


def _status(tmp_path):
    recs = {"01_a": {"notebook": "01_a", "status": "ok", "wall_s": 2.0, "peak_rss_gb": 0.5},
            "02_b": {"notebook": "02_b", "status": "ok", "wall_s": 5.5, "peak_rss_gb": 1.5}}
    (tmp_path/"status.json").write_text(json.dumps(recs))
    return tmp_path


def test_sequence(capsys, tmp_path):
    rec = _last_json(capsys, ["sequence", str(_status(tmp_path))])
    assert rec == dict(bench="sequence", run=str(tmp_path), total_s=7.5, sum_s=7.5, elapsed_s=None, n_notebooks=2, n_ok=2,
                       slowest="02_b", wall_s={"02_b": 5.5, "01_a": 2.0})


def test_sequence_total_is_the_elapsed_wall_time_once_recorded(capsys, tmp_path):
    "Notebooks that ran side by side overlap: the run's elapsed time from run.json is the total, the sum stays as sum_s."
    run = {"started": "2026-01-01T00:00:00", "finished": None, "elapsed_s": None, "jobs": 2}
    (_status(tmp_path)/"run.json").write_text(json.dumps(run))
    assert _last_json(capsys, ["sequence", str(tmp_path)])["total_s"] == 7.5           # a run still going: the sum
    (tmp_path/"run.json").write_text(json.dumps({**run, "finished": "2026-01-01T00:00:06", "elapsed_s": 6.0}))
    rec = _last_json(capsys, ["sequence", str(tmp_path)])
    assert (rec["total_s"], rec["sum_s"], rec["elapsed_s"]) == (6.0, 7.5, 6.0)


def test_module_entry_point(tmp_path):
    "`python -m hvr_nbs.bench` (what the `hvr-bench` console script runs) prints the record as its last line."
    r = subprocess.run([sys.executable, "-m", "hvr_nbs.bench", "sequence", str(_status(tmp_path))], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["total_s"] == 7.5
    r = subprocess.run([sys.executable, "-m", "hvr_nbs.bench", "sequence", str(tmp_path/"nothing")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not an hvr-reproduce run folder" in r.stderr


def test_configs_without_output_dir_in_a_fresh_process(tmp_path):
    "`grpo_config()` / `sft_config()` with no output_dir use a temporary folder (the module imports tempfile itself)."
    code = ("from hvr_nbs.training import grpo_config, sft_config\n"
            "import os; g, s = grpo_config(), sft_config(); assert os.path.isdir(g.output_dir) and os.path.isdir(s.output_dir)\n"
            "print(g.output_dir, s.output_dir)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TMPDIR": str(tmp_path)})  # the child's temporary folders: in pytest's, not /tmp
    assert r.returncode == 0, r.stderr[-2000:]
    g, s = r.stdout.split()
    assert os.path.basename(g).startswith("grpo-") and os.path.basename(s).startswith("sft-")
    assert os.path.dirname(g) == os.path.dirname(s) == str(tmp_path)
