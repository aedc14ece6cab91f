"Tests for the VL-Taxon notebook's library (hvr_nbs.vl_taxon): prompts, targets, rewards, data rows, metrics, tables."
import math
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from hvr_nbs.core import get_profile
from hvr_nbs.rewards import parse_tag, vl_taxon_format_reward, vl_taxon_stage1_reward, vl_taxon_stage2_reward
from hvr_nbs.vl_taxon import (RANKS, METHODS, stage1_prompt, stage1_target, stage2_prompt, stage2_target, paper_table,
                              vl_taxon_accuracy_reward, hierarchy_scores, results_table, vl_taxon_images,
                              vl_taxon_questions, stage1_rows, stage2_rows, sibling_share, paper_overrides,
                              vl_taxon_settings, _sft_rows, _grpo_rows)

name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=10)
paths = st.tuples(name, name, name, name).map(lambda p: (p[0].capitalize() + "iformes", p[1].capitalize() + "idae",
                                                         p[2].capitalize(), f"{p[2].capitalize()} {p[3]}"))

@settings(max_examples=100, deadline=None)
@given(paths, st.sampled_from("ABCD"))
def test_ideal_targets_earn_full_reward(path, letter):
    t1, t2 = stage1_target(path), stage2_target(path, letter)
    assert parse_tag(t1, "answer") == path[-1]
    assert vl_taxon_format_reward([t1, t2]) == [1.0, 1.0]
    assert vl_taxon_stage1_reward([t1], answer=[path[-1]]) == [1.0]
    assert vl_taxon_accuracy_reward([t1, t2], [path[-1], letter], [1, 2]) == [1.0, 1.0]
    for other in set("ABCD") - {letter}:  # every other letter scores 0
        assert vl_taxon_stage2_reward([t2], answer=[other]) == [0.0]

@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.sampled_from([1, 2]))
def test_accuracy_reward_never_raises(text, stage):
    r = vl_taxon_accuracy_reward([text], ["A" if stage == 2 else "Aus bus"], [stage])
    assert r in ([0.0], [1.0])

def test_accuracy_reward_rejects_bad_stage():
    with pytest.raises(ValueError, match="stage must be 1 or 2"): vl_taxon_accuracy_reward(["x"], ["A"], [0])

def test_prompts():
    assert "first its order, then its family, then its genus" in stage1_prompt(RANKS, "bird")
    p = stage2_prompt("Aus bus", "genus", ["Aus", "Bus", "Cus"])
    assert "A. Aus\nB. Bus\nC. Cus" in p and "identified as Aus bus" in p and "D." not in p
    assert "could not be identified" in stage2_prompt(None, "genus", ["Aus", "Bus"])
    with pytest.raises(ValueError): stage2_prompt("x", "genus", ["a"] * 5)
    with pytest.raises(ValueError): stage1_prompt(["species"])
    with pytest.raises(ValueError): stage2_target(("a", "b", "c", "d"), "E")

def test_paper_tables_agree_with_each_other():
    t3, t4, t5, t6 = (paper_table(i) for i in (3, 4, 5, 6))
    assert (t3.loc["VL-Taxon (Ours)"].values == t4.loc["VL-Taxon"].values).all()
    assert (t6.loc["Hybrid"].drop("TKs", level="metric").values == t3.loc["VL-Taxon (Ours)"].values).all()
    assert (t5.loc["VL-Taxon"].xs("Acc_leaf", level="metric").values ==
            t3.loc["VL-Taxon (Ours)"].xs("Acc_leaf", level="metric").values).all()
    for n in range(1, 8): assert paper_table(n).notna().all().all()
    with pytest.raises(ValueError, match="Tables 1-7"): paper_table(0)

def _preds(truth_paths, pred_paths):
    rows = []
    for i, (t, p) in enumerate(zip(truth_paths, pred_paths)):
        for r, a, b in zip(RANKS, t, p): rows.append(dict(image_id=f"i{i}", rank=r, answer_text=a, pred=b, stage1_leaf=t[-1]))
    return pd.DataFrame(rows)

@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.booleans()] * 4), min_size=1, max_size=12))
def test_hierarchy_scores_bounds(hits):
    truths = [tuple(f"{r}{i}" for r in RANKS) for i in range(len(hits))]
    preds = [tuple(t if h else None for t, h in zip(tr, hs)) for tr, hs in zip(truths, hits)]
    s = hierarchy_scores(_preds(truths, preds))
    assert 0 <= s["HCA"] <= s["Acc_leaf"] <= 1 and s["HCA"] <= s["POR"] <= 1 and s["HCA"] <= s["TOR"] <= 1
    assert all(s["HCA"] <= s[f"Acc_{r}"] for r in RANKS)
    assert s["HCA"] == pytest.approx(np.mean([all(h) for h in hits]))
    if any(h[-1] for h in hits): assert s["HCA(L)"] >= s["HCA"]
    else: assert s["HCA(L)"] is None
    assert s["Acc_leaf (stage 1, open)"] == 1.0

def test_results_table_per_method():
    truths = [("O", "F", "G", "G s")] * 2
    good = _preds(truths, truths).assign(method="good", format=1.0, n_tokens=10)
    bad = _preds(truths, [("O", "X", "G", "G s")] * 2).assign(method="bad", format=0.5, n_tokens=4)
    t = results_table(pd.concat([good, bad]))
    assert list(t.index) == ["good", "bad"]
    assert t.loc["good", "HCA"] == 100 and t.loc["bad", "HCA"] == 0 and t.loc["bad", "HCA(L)"] == 0
    assert t.loc["bad", "Acc_family"] == 0 and t.loc["bad", "TKs"] == 4

@pytest.fixture(scope="module")
def small():
    prof = get_profile("smoke")
    imgs = vl_taxon_images(prof, seed=0, n_test_per_species=1, n_train_per_species=1)
    Q = {k: vl_taxon_questions(imgs[k], imgs["taxonomy"], None, seed=0, domain=imgs["domain"]) for k in ("sft", "grpo", "test")}
    return imgs, Q

def test_images_split_by_species(small):
    imgs, _ = small
    leaf = imgs["taxonomy"].leaf_rank
    assert not set(imgs["sft"][leaf]) & set(imgs["grpo"][leaf])
    assert set(imgs["test"][leaf]) == set(imgs["sft"][leaf]) | set(imgs["grpo"][leaf])

def test_questions_and_rows(small):
    imgs, Q = small
    q = Q["test"].select_columns(["rank", "options", "answer", "answer_text"]).to_pandas()
    assert set(q["rank"]) == set(RANKS) and len(q) == len(imgs["test"]) * len(RANKS)
    assert all(o[ord(a) - 65] == t for o, a, t in zip(q["options"], q["answer"], q["answer_text"]))
    n_orders = len(imgs["taxonomy"].nodes_at("order"))
    assert all(len(o) == min(4, n_orders) for o, r in zip(q["options"], q["rank"]) if r == "order")
    s1, s2 = stage1_rows(imgs["sft"], RANKS, "animal"), stage2_rows(Q["sft"], RANKS, "animal")
    assert set(s1["stage"]) == {1} and set(s2["stage"]) == {2}
    assert all(a in "ABCD" for a in s2["answer"])
    g = _grpo_rows(imgs, Q)  # stage-1 and stage-2 rows concatenate (one Arrow schema)
    assert len(g) == len(imgs["grpo"]) + len(Q["grpo"]) and set(g["stage"]) == {1, 2}
    s = _sft_rows(imgs, Q, "sft"); d = _sft_rows(imgs, Q, None, direct=True)
    assert len(s) == len(imgs["sft"]) + len(Q["sft"]) and len(d) == len(Q["sft"]) + len(Q["grpo"])
    assert set(sibling_share(Q["test"], imgs["taxonomy"]).index) == set(RANKS[1:])

def test_paper_settings():
    po = paper_overrides(get_profile("paper"))
    assert po["grpo"]["num_generations"] == 8 and po["grpo"]["beta"] == 0.4 and po["lora_r"] == po["lora_alpha"] == 64
    assert po["sft"]["per_device_train_batch_size"] * po["sft"]["gradient_accumulation_steps"] == 128
    assert paper_overrides(get_profile("smoke")) == {}
    assert vl_taxon_settings(get_profile("smoke"))["LoRA (r / alpha)"] == "no (full)"
    assert METHODS[-1] == "vl-taxon" and METHODS.index("vl-taxon-sft") < METHODS.index("vl-taxon")

@pytest.mark.parametrize("name", ["inat21", "cub"])
def test_paper_profile_reads_the_official_layouts(name, tmp_path):
    "The `paper` branch of `vl_taxon_images` on the loaders' generated fixtures (iNat21 / CUB-200 official layouts)."
    from hvr_nbs.loaders import make_fixture
    make_fixture(name, tmp_path/name, n_classes=6, n_per_class=4)
    prof = get_profile("paper", data_root=str(tmp_path))
    d = vl_taxon_images(prof, dataset=name)
    leaf = d["taxonomy"].leaf_rank
    assert len(d["sft"]) and len(d["grpo"]) and len(d["test"])
    assert not set(d["sft"][leaf]) & set(d["grpo"][leaf])
    if name == "inat21": assert d["ranks"][0] == "kingdom" and len(d["ranks"]) == 7
    else: assert d["domain"] == "bird" and d["ranks"] == RANKS
    q = vl_taxon_questions(d["test"], d["taxonomy"], None, domain=d["domain"])
    assert set(q["rank"]) <= set(d["ranks"]) and all(a in "ABCD" for a in q["answer"])
    assert len(stage1_rows(d["sft"], d["ranks"], d["domain"])) == len(d["sft"])
