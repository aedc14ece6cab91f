"Checks of hvr_nbs.evaluation on tiny offline VLMs (left padding, batched == one-by-one greedy, sampling, scoring tables, saved files) and of the result checks (pass@k, learning and collapse checks, baselines, diagnostics, figures)."
import json, math
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hvr_nbs.models import make_tiny_vlm, load_vlm
from hvr_nbs.evaluation import (encode_batch, generate_completions, next_token_gap, score_completions, row_scorer,
                                summarise, completions_table, save_completions, benchmark_generation,
                                sample_completions, score_samples, pass_at_k, sampling_summary, trivial_baselines,
                                learning_check, plot_learning_check, collapse_check, report_collapse, collapse_message,
                                plot_diagnostics, log_figure, COLLAPSE_COLUMNS)


def _image(seed, side):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))


def _prompt(text, n_images=1):
    return [{"role": "user", "content": [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]}]


SINGLE = [dict(prompt=_prompt("What is the genus?" + " Answer briefly." * k), image=_image(k, 56 + 28 * (k % 3)),
               answer=["Aus", "Bus", "Cus", "Dus", "Eus"][k]) for k in range(5)]
PAIRS = [dict(prompt=_prompt("Same species?" + "?" * k, 2), images=[_image(10 + k, 56), _image(20 + k, 84)], label=k % 2)
         for k in range(3)]


def _varied(model):
    "Redraw weight matrices with std 0.1 so greedy outputs differ from row to row (random init repeats one token)."
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2: p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny(request, tmp_path_factory):
    d = make_tiny_vlm(tmp_path_factory.mktemp(request.param), arch=request.param, size="xs", vocab_size=512)
    model, processor = load_vlm(d, device="cpu")
    return _varied(model), processor


def test_left_padding_used_and_restored(tiny):
    _, processor = tiny
    processor.tokenizer.padding_side = "right"
    enc = encode_batch(processor, SINGLE[:3], image_column="image")
    assert processor.tokenizer.padding_side == "right"
    am = enc["attention_mask"]
    assert (am == 0).any() and (am[:, -1] == 1).all()
    assert not am.diff(dim=1).lt(0).any()  # zeros only before ones
    processor.tokenizer.padding_side = "left"


def test_batched_equals_one_by_one(tiny):
    model, processor = tiny
    batched = generate_completions(model, processor, SINGLE, batch_size=5, max_new_tokens=10, progress=False)
    single = generate_completions(model, processor, SINGLE, batch_size=1, max_new_tokens=10, progress=False)
    assert len(set(batched)) > 1
    assert batched == single
    pb = generate_completions(model, processor, PAIRS, batch_size=3, max_new_tokens=8, progress=False)
    assert pb == generate_completions(model, processor, PAIRS, batch_size=1, max_new_tokens=8, progress=False)
    assert next_token_gap(model, processor, SINGLE) < 1e-3


def test_benchmark_reports(tiny):
    model, processor = tiny
    b = benchmark_generation(model, processor, SINGLE[:4], batch_size=4, max_new_tokens=6)
    assert b["agree"] == 1.0 and b["mismatches"] == [] and b["distinct"] > 1
    assert math.isclose(b["ratio"], b["single_s"] / b["batched_s"])


def test_bad_rows_named():
    with pytest.raises(ValueError, match="row 1"):
        rows = [SINGLE[0], dict(SINGLE[1], prompt=_prompt("x", 2))]
        from hvr_nbs.evaluation import prompt_messages, row_images
        for i, r in enumerate(rows): prompt_messages(r["prompt"], row_images(r, "image", i), idx=i)


@row_scorer
def _exact(text, row): return float(text.strip() == row["answer"])


def _levels(completions, answer, **kw):
    return [{"genus": float(c[0]["content"].startswith(a)), "first_letter": float(c[0]["content"][:1] == a[:1])}
            for c, a in zip(completions, answer)]


def test_score_table_columns_and_values(tmp_path):
    comps = ["Aus", "Bxx", "Cus sp.", "", "nonsense"]
    df = score_completions(SINGLE, comps, {"exact": _exact, "lvl": _levels}, parser=lambda t: {"first": t[:1] or None})
    assert list(df.columns[:4]) == ["idx", "prompt", "completion", "pred_first"]
    assert df["exact"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert df["lvl_genus"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert df["lvl_first_letter"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert "answer" in df and "image" not in df
    assert df.attrs["score_columns"] == ["exact", "lvl_genus", "lvl_first_letter"]
    s = summarise(df.assign(g=["a", "a", "b", "b", "b"]), by="g")
    assert s.set_index(["g", "metric"]).loc[("a", "lvl_first_letter"), "mean"] == 1.0
    html = completions_table(df.assign(completion=["<b>x</b>"] * 5), SINGLE, n=3).to_html()
    assert html.count("<img") == 3 and "<b>x</b>" not in html
    paths = save_completions(df, tmp_path / "out", SINGLE, thumb_px=16)
    back = pd.read_csv(paths["csv"])
    assert back["exact"].tolist() == df["exact"].tolist()
    assert paths["html"].read_text().count("<img") == 5
    with pytest.raises(ValueError, match="returned 1 values"):
        score_completions(SINGLE, comps, {"bad": lambda completions, **kw: [0.0]})


# ---- sampling and pass@k -------------------------------------------------------------------------------------------

def test_sampling_n_per_row_reproducible_and_greedy_in_the_cold(tiny):
    model, processor = tiny
    s = sample_completions(model, processor, SINGLE, n=3, max_new_tokens=6, batch_size=2, progress=False)
    assert [len(x) for x in s] == [3] * len(SINGLE) and all(isinstance(t, str) for x in s for t in x)
    assert any(len(set(x)) > 1 for x in s)
    assert sample_completions(model, processor, SINGLE, n=3, max_new_tokens=6, batch_size=2, progress=False) == s
    cold = sample_completions(model, processor, SINGLE, n=2, temperature=1e-4, max_new_tokens=6, progress=False)
    assert [x[0] for x in cold] == generate_completions(model, processor, SINGLE, max_new_tokens=6, progress=False)
    assert [len(x) for x in sample_completions(model, processor, PAIRS, n=2, max_new_tokens=4, progress=False)] == [2] * 3
    with pytest.raises(ValueError, match="temperature"): sample_completions(model, processor, SINGLE, temperature=0)
    long = score_samples(SINGLE, s, {"exact": _exact})
    assert len(long) == 3 * len(SINGLE) and set(long["sample"]) == {0, 1, 2}


def test_pass_at_k_matches_brute_force():
    import itertools
    for n in (1, 3, 5):
        for c in range(n + 1):
            for k in range(1, n + 1):
                brute = np.mean([any(i < c for i in sub) for sub in itertools.combinations(range(n), k)])
                assert math.isclose(pass_at_k(c, n, k), brute, abs_tol=1e-12)
    with pytest.raises(ValueError): pass_at_k(1, 2, 3)


def test_sampling_summary_on_hand_made_matrix():
    t = sampling_summary([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], answers=[["a", "a", "b", None], ["", None, "c", "C"], ["x"] * 4])
    row = t.iloc[0]
    assert math.isclose(row["pass@1"], 0.5) and math.isclose(row["pass@4"], 2 / 3)
    assert math.isclose(row["pass@2"], (pass_at_k(2, 4, 2) + 0 + 1) / 3)
    assert math.isclose(row["zero_std_share"], 2 / 3) and math.isclose(row["distinct_answers"], 4 / 3)


# ---- learning check ------------------------------------------------------------------------------------------------

def _records(deltas, start=0.5):
    return pd.DataFrame([dict(method=m, metric="acc", seed=s, start_value=start, value=start + d / 100)
                         for m, ds in deltas.items() for s, d in enumerate(ds)])


def test_learning_check_columns_and_verdicts():
    t = learning_check(_records({"good": [4, 5, 6], "one_loses": [9, 9, -0.5], "tiny": [1, 1, 1], "wobbly": [8, 1, 1]}))
    assert list(t.columns) == ["method", "metric", "n_seeds", "start_value", "trained_mean", "trained_std", "seed_deltas", "learns"]
    assert t.set_index("method")["learns"].to_dict() == {"good": True, "one_loses": False, "tiny": False, "wobbly": False}
    good = t.set_index("method").loc["good"]
    assert good["seed_deltas"] == "+4.0;+5.0;+6.0" and good["n_seeds"] == 3
    assert math.isclose(good["start_value"], 50.0) and math.isclose(good["trained_mean"], 55.0) and math.isclose(good["trained_std"], 1.0)
    assert learning_check(_records({"tiny": [1, 1, 1]}), min_delta=0.5)["learns"].all()
    assert not learning_check(_records({"good": [4]}))["learns"].any()  # one seed never passes
    fig = plot_learning_check(t)
    assert len(fig.axes) == 1 and sum(len(l.get_xdata()) == 2 for l in fig.axes[0].lines) == 4 * 3 + 4  # seeds + means (legend handles aside)


# ---- collapse check ------------------------------------------------------------------------------------------------

def _preds(**methods):
    return pd.concat([pd.DataFrame(dict(method=m, item=range(len(a)), answer=a)) for m, a in methods.items()], ignore_index=True)


def test_collapse_check_flags_each_fixture():
    const = _preds(rl=["different"] * 10, base=["same", "different"] * 5)
    assert collapse_check(const, item_col="item")[["method", "check"]].values.tolist() == [["rl", "dominant_answer"]]
    same = _preds(grpo=list("ABCDABCDAB"), base=list("abcdabcdab"), other=list("BBCDABCDAB"))
    w = collapse_check(same, item_col="item")
    assert w[["method", "check"]].values.tolist() == [["grpo, base", "identical_predictions"]]
    shuffled = pd.DataFrame(dict(method="base", item=range(10)[::-1], answer=list("ABCDABCDAB")[::-1]))
    w = collapse_check(pd.concat([same[same.method == "grpo"], shuffled]), item_col="item")
    assert w["check"].tolist() == ["identical_predictions"]  # paired by item id, not by row order
    fmt = _preds(a=list("ABCDABCDAB")).assign(ok=[0] * 10)
    assert collapse_check(fmt, format_col="ok")["check"].tolist() == ["low_format_rate"]
    logs = pd.DataFrame({"step": [1, 2, 3], "method": "a", "reward": 0.0, "rewards/acc/mean": [0.0, 0.1, 0.0],
                         "frac_reward_zero_std": [0.9, 0.85, 0.95]})
    w = collapse_check(None, logs=logs)
    assert w["check"].tolist() == ["reward_never_nonzero", "zero_std_groups"] and "'reward'" in w["message"][0]


def test_collapse_check_healthy_and_odd_inputs(tmp_path, monkeypatch, capsys):
    healthy = _preds(rl=list("ABCDABCDAA"), base=list("ABCDBBCDAB")).assign(ok=1)
    logs = {"rl": pd.DataFrame({"step": [1, 2], "reward": [0.1, 0.3], "frac_reward_zero_std": [0.2, 0.4]})}
    w = collapse_check(healthy, item_col="item", format_col="ok", logs=logs)
    assert list(w.columns) == COLLAPSE_COLUMNS and w.empty
    odd = pd.DataFrame(dict(method=["m"] * 8, answer=[None, np.nan, "", 7, 0.5, "<b>", "\u202e\x00", "x" * 5000]))
    assert collapse_check(odd).empty
    monkeypatch.setenv("HVR_RESULTS_DIR", str(tmp_path))
    report_collapse(w, "healthy")
    report_collapse(collapse_check(_preds(rl=["x"] * 6)), "const")
    out = capsys.readouterr().out
    assert "collapse check passed: healthy" in out and "⚠️ collapse check of const: 1 warning(s): rl: 'x' is 100%" in out
    assert pd.read_csv(tmp_path / "healthy_collapse_check.csv", index_col=0).empty
    assert collapse_message(None, "x") == "✅ collapse check passed: x"


try:
    from hypothesis import given, strategies as st

    @given(st.lists(st.one_of(st.none(), st.text(max_size=20), st.integers(), st.floats(allow_nan=True)), min_size=0, max_size=30),
           st.integers(1, 3))
    def test_collapse_check_never_raises_on_model_output(answers, n_methods):
        df = pd.DataFrame(dict(method=[f"m{i % n_methods}" for i in range(len(answers))], answer=pd.Series(answers, dtype=object)))
        w = collapse_check(df, min_items=1)
        assert list(w.columns) == COLLAPSE_COLUMNS
        trivial_baselines(answers)
except ImportError:  # hypothesis is a dev dependency
    pass


# ---- baselines, diagnostics, figures -------------------------------------------------------------------------------

def test_trivial_baselines():
    t = trivial_baselines(["B", "B", "A", "C"], constants={'always "A"': "A"}, n_options=4)
    assert t.values.tolist() == [["always the majority answer", "B", 0.5], ['always "A"', "A", 0.25], ["chance", "(uniform guess)", 0.25]]
    assert trivial_baselines(["x", "y"])["score"].iloc[-1] == 0.5


def test_plot_diagnostics_and_log_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    log = pd.DataFrame({"step": [1, 2, 3] * 2, "seed": [0] * 3 + [1] * 3, "method": "grpo", "reward": [0.1, 0.2, 0.3, 0.2, 0.2, 0.4],
                        "rewards/accuracy_reward/mean": 0.5, "kl": np.nan, "entropy": [0.8, 0.7, 0.6] * 2, "unrelated": 1})
    fig = plot_diagnostics(log)
    assert [a.get_title() for a in fig.axes if a.get_title()] == ["reward", "reward: accuracy_reward", "entropy"]
    monkeypatch.setenv("HVR_RESULTS_DIR", str(tmp_path))
    png = log_figure("diag nostics", fig, caption="c")
    assert png == tmp_path / "diag_nostics.png" and png.stat().st_size > 1000
    assert json.loads((tmp_path / "diag_nostics.json").read_text())["kind"] == "figure"
    plt.close("all")
