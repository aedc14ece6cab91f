"Checks of hvr_nbs.evaluation on tiny offline VLMs: left padding, batched == one-by-one greedy, scoring tables, saved files."
import math
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hvr_nbs.models import make_tiny_vlm, load_vlm
from hvr_nbs.evaluation import (encode_batch, generate_completions, next_token_gap, score_completions, row_scorer,
                                summarise, completions_table, save_completions, benchmark_generation)


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
