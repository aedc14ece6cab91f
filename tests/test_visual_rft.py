"Property tests for the Visual-RFT notebook's metrics and helpers (hvr_nbs.visual_rft)."
import math
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from datasets import Dataset
from hvr_nbs.visual_rft import average_precision, answer_kind, reward_hole_table, kshot, detection_metrics

coord = st.integers(0, 100)
@st.composite
def box(draw):
    x1, y1 = draw(coord), draw(coord)
    return [x1, y1, x1 + draw(st.integers(1, 40)), y1 + draw(st.integers(1, 40))]

images = st.lists(st.lists(box(), max_size=4), min_size=1, max_size=5)

@settings(max_examples=150, deadline=None)
@given(images)
def test_perfect_predictions_score_one(gts):
    preds = [[(b, 0.9) for b in g] for g in gts]
    ap = average_precision(preds, gts)
    if sum(map(len, gts)) == 0: assert math.isnan(ap)
    else: assert ap == pytest.approx(1.0)

@settings(max_examples=150, deadline=None)
@given(images, images, st.randoms(use_true_random=False))
def test_ap_bounded_and_image_order_invariant(gts, noise, rnd):
    n = min(len(gts), len(noise)); gts, noise = gts[:n], noise[:n]
    preds = [[(b, round(rnd.random(), 3)) for b in p] for p in noise]
    ap = average_precision(preds, gts)
    if sum(map(len, gts)) == 0: return
    assert 0.0 <= ap <= 1.0
    order = list(range(n)); rnd.shuffle(order)
    assert average_precision([preds[i] for i in order], [gts[i] for i in order]) == pytest.approx(ap)

@settings(max_examples=100, deadline=None)
@given(images)
def test_a_confident_false_positive_never_raises_ap(gts):
    if sum(map(len, gts)) == 0: return
    preds = [[(b, 0.9) for b in g] for g in gts]
    worse = [p + [([500, 500, 510, 510], 0.95)] for p in preds]  # a confident false positive in every image
    assert average_precision(worse, gts) <= average_precision(preds, gts) + 1e-12

@given(st.text(max_size=60))
def test_answer_kind_never_raises(t):
    assert answer_kind(t, "Aus bus") in {"right", "wrong", "empty", "several names", "no answer"}
    assert answer_kind(f"<think>x</think><answer>{t}</answer>") in {"single", "empty", "several names", "no answer"}

def test_hole_table_shows_the_hole():
    outs = ["<answer>Aus bus</answer>", "<answer></answer>", "<answer>Aus bus, Aus cus</answer>", "<answer>Aus cus</answer>"]
    t = reward_hole_table(outs, ["Aus bus"] * 4)
    assert t.loc["empty"].iloc[1] == 1.0 and t.loc["empty"].iloc[2] == 0.0
    assert t.loc["several names"].iloc[1] == 1.0 and t.loc["several names"].iloc[2] == 0.0
    assert t.loc["wrong"].iloc[1:].tolist() == [0.0, 0.0]

@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=30), st.integers(1, 5), st.integers(0, 10))
def test_kshot_counts(labels, k, seed):
    ds = Dataset.from_dict({"answer": labels, "i": list(range(len(labels)))})
    got = kshot(ds, k, "answer", seed)
    for c in set(labels): assert got["answer"].count(c) == min(k, labels.count(c))
    assert len(set(got["i"])) == len(got)

def test_detection_metrics_never_raise_on_junk():
    rows = [{"category": "a", "boxes": [[0, 0, 10, 10]]}] * 4
    outs = ["", "<answer>[{'Position': [0, 0, 10</answer>", "<answer>[1, 2, {}]</answer>", None]
    per_row, ap = detection_metrics(outs, rows)
    assert per_row.R_IoU.tolist() == [0.0] * 4 and ap["a"] == 0.0

def test_tied_confidences_do_not_depend_on_image_order():
    "Hypothesis found it: a hit and a miss at one confidence scored 1.0 or 0.5 depending on which image came first."
    A = [0, 0, 1, 1]
    tied = [[(A, 0.5)], [(A, 0.5)]]
    assert average_precision(tied, [[], [A]]) == average_precision(tied, [[A], []]) == pytest.approx(0.5)


def test_paper_settings_reach_the_paper_profile():
    "`--profile paper` runs Visual-RFT's own settings (no TaxonRL values leak in) and the settings table agrees."
    from hvr_nbs.visual_rft import PAPER_SETTINGS, visual_rft_profile, SMOKE_RECIPE
    from hvr_nbs.runs import settings_table, check_settings
    p = visual_rft_profile("paper")
    assert (p.model.vlm, p.train.beta, p.train.epsilon_high, p.train.temperature) == ("Qwen/Qwen2-VL-2B-Instruct", 0.04, 0.2, 0.9)
    trainer = {"grpo": dict(num_train_epochs=2, max_steps=-1), "sft": dict(num_train_epochs=2, max_steps=-1), "det": dict(num_generations=4)}
    check_settings(settings_table(PAPER_SETTINGS, {"paper run": (p, trainer)}))
    s = visual_rft_profile("smoke")
    assert s.train.learning_rate == SMOKE_RECIPE["train__learning_rate"] and s.train.per_device_batch % s.train.num_generations == 0


def test_command_line_trains_and_writes_tables(tmp_path):
    "`python -m hvr_nbs.visual_rft` (what `accelerate launch -m` runs) trains SFT and RFT, evaluates and writes the learning check on CPU."
    import os, subprocess, sys
    import pandas as pd
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1", HVR_CACHE=os.environ.get("HVR_CACHE") or str(tmp_path/"cache"))
    out = tmp_path/"run"
    help_ = subprocess.run([sys.executable, "-m", "hvr_nbs.visual_rft", "--help"], env=env, capture_output=True, text=True, timeout=300)
    assert help_.returncode == 0 and "--shots" in help_.stdout, help_.stderr[-2000:]
    cmd = [sys.executable, "-m", "hvr_nbs.visual_rft", "--profile", "smoke", "--shots", "1", "--steps", "1", "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_csv(out/"results_SynthTaxa.csv")
    assert set(res["method"]) == {"base", "sft", "rft"} and len(res) == 3
    assert {"greedy accuracy", "sampled accuracy"} <= set(res.columns)
    lc = pd.read_csv(out/"visual_rft_learning_check_SynthTaxa.csv")
    assert list(lc.columns) == ["method", "metric", "n_seeds", "start_value", "trained_mean", "trained_std", "seed_deltas", "learns"]
    assert set(lc["method"]) == {"sft", "rft"} and (out/"manifest.json").exists()
    for d in ("SynthTaxa-classification-base", "SynthTaxa-classification-rft-k1-s0"):
        assert (out/"runs"/d/"manifest.json").exists() and (out/"runs"/d/"completions.csv").exists(), d
    assert (out/"runs"/"SynthTaxa-classification-rft-k1-s0"/"train_log.csv").exists()
