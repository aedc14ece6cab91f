"Tests for the VL-Taxon notebook's library (hvr_nbs.vl_taxon): prompts, targets, rewards, data rows, metrics, tables."
import math
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from hvr_nbs.core import get_profile
from hvr_nbs.rewards import parse_tag, vl_taxon_format_reward, vl_taxon_stage1_reward, vl_taxon_stage2_reward
from hvr_nbs.vl_taxon import (RANKS, METHODS, PAPER_SETTINGS, SMOKE_RECIPE, stage1_prompt, stage1_target, stage2_prompt,
                              stage2_target, paper_table, vl_taxon_accuracy_reward, hierarchy_scores, results_table,
                              vl_taxon_images, vl_taxon_questions, stage1_rows, stage2_rows, vl_taxon_profile,
                              vl_taxon_learning_check, _sibling_share, _sft_rows, _grpo_rows, _trainer_kw, _direct_reward,
                              _START)

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
    imgs = vl_taxon_images(prof, seed=0, n_test_per_species=1, n_train_per_species=2)
    Q = {k: vl_taxon_questions(imgs[k], imgs["taxonomy"], None, seed=0, domain=imgs["domain"]) for k in ("sft", "grpo", "test")}
    return imgs, Q

def test_images_split_per_species(small):
    "Each species' training images are split in halves: both stages see every species, no image twice (paper Sec. 4.4)."
    imgs, _ = small
    leaf = imgs["taxonomy"].leaf_rank
    assert set(imgs["sft"][leaf]) == set(imgs["grpo"][leaf]) == set(imgs["test"][leaf])
    assert not set(imgs["sft"]["image_id"]) & set(imgs["grpo"]["image_id"])
    assert len(imgs["sft"]) == len(imgs["grpo"]) == len(set(imgs["test"][leaf]))  # 2 images per species: one each

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
    assert len(g) == 2 * len(imgs["grpo"]) and set(g["stage"]) == {1, 2}  # per image: stage 1 and one stage-2 question
    assert len(_grpo_rows(imgs, Q, one_rank=False)) == len(imgs["grpo"]) + len(Q["grpo"])
    s = _sft_rows(imgs, Q, "sft"); d = _sft_rows(imgs, Q, "sft", direct=True)
    assert len(s) == len(imgs["sft"]) + len(Q["sft"]) and len(d) == len(Q["sft"])
    g2 = _grpo_rows(imgs, Q, "grpo", direct=True)
    assert len(g2) == len(Q["grpo"]) and set(g2["stage"]) == {2}
    assert set(_sibling_share(Q["test"], imgs["taxonomy"]).index) == set(RANKS[1:])

def test_paper_settings():
    "The `paper` run takes VL-Taxon's own settings (none of TaxonRL's), and the settings table agrees with them."
    from hvr_nbs.runs import settings_table, check_settings
    pp = vl_taxon_profile("paper")
    assert (pp.model.lora, pp.model.lora_r, pp.model.lora_alpha) == (True, 64, 64)
    assert pp.train.num_generations == 8 and pp.train.beta == 0.4 and pp.train.epsilon_high == 0.2
    assert pp.model.vlm == "Qwen/Qwen2.5-VL-7B-Instruct" and pp.model.similarity == "siglip"
    sft, grpo = _trainer_kw(pp, "sft"), _trainer_kw(pp, "grpo")
    assert sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"] == 128
    assert pp.train.per_device_batch * grpo["gradient_accumulation_steps"] == 128 * pp.train.num_generations
    assert sft["num_train_epochs"] == grpo["num_train_epochs"] == 1
    t = check_settings(settings_table(PAPER_SETTINGS, {"paper run": (pp, {"sft": sft, "grpo": grpo})}))
    assert t.loc["LoRA rank r", "paper run"] == 64
    with pytest.raises(AssertionError, match="disagrees"):
        check_settings(settings_table(PAPER_SETTINGS, {"paper run": (get_profile("paper"), {})}))
    sm = vl_taxon_profile("smoke")
    assert not sm.model.lora and sm.train.sft_steps == SMOKE_RECIPE["train__sft_steps"] and len(sm.train.seeds) == 3
    assert _trainer_kw(get_profile("gpu-small"), "grpo") == {}
    assert METHODS.index("vl-taxon-sft") < METHODS.index("vl-taxon") and METHODS.index("sft-direct") < METHODS.index("grpo-direct")
    assert set(_START) == {"vl-taxon", "grpo-direct"}

def test_direct_reward_is_strict():
    assert _direct_reward(["B", "The answer is B", "A or B", "", "b"], ["B"] * 5)[:4] == [1.0, 1.0, 0.0, 0.0]
    assert _direct_reward(["Aus bus", "aus BUS", "B", "Aus bus, Cus", None], ["Aus bus"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]  # by name

def test_questions_answered_by_name(small):
    "Tiny models answer with the option's name: the prompts ask for it, the rows are rewarded on it, the letter stays in `answer`."
    from hvr_nbs.vl_taxon import answers_by_name
    imgs, _ = small
    assert answers_by_name(vl_taxon_profile("smoke")) and not answers_by_name(vl_taxon_profile("paper"))
    q = vl_taxon_questions(imgs["sft"], imgs["taxonomy"], None, seed=0, domain=imgs["domain"], by_name=True)
    assert list(q["reply"]) == list(q["answer_text"]) and all(a in "ABCD" for a in q["answer"])
    assert all("option's name" in p[0]["content"][1]["text"] for p in q["prompt"])
    s2 = stage2_rows(q, RANKS, "animal")
    assert list(s2["answer"]) == list(q["answer_text"])
    assert all("give the option's name" in p[0]["content"][1]["text"] for p in s2["prompt"])
    assert vl_taxon_accuracy_reward(s2["completion"], s2["answer"], s2["stage"]) == [1.0] * len(s2)  # the ideal targets
    assert set(_grpo_rows(imgs, {"sft": q}, "sft", direct=True)["answer"]) == set(q["answer_text"])

def test_learning_check_pairs_each_rl_method_with_its_start():
    from pathlib import Path
    from hvr_nbs.runs import RunResult
    rr = lambda m, s, v: RunResult(m, s, pd.DataFrame(), {"sampled accuracy": v, "HCA": v}, pd.DataFrame(), Path("."))
    runs = [rr("vl-taxon-sft", 0, 0.2), rr("sft-direct", 0, 0.5)] + [rr("vl-taxon", s, 0.3) for s in range(3)] + \
           [rr("grpo-direct", s, 0.5) for s in range(3)]
    lc = vl_taxon_learning_check(runs, metrics=("sampled accuracy", "HCA")).set_index(["method", "metric"])
    assert lc.loc[("vl-taxon", "(a) sampled accuracy"), "start_value"] == 20.0 and lc.loc[("vl-taxon", "(a) sampled accuracy"), "learns"]
    assert lc.loc[("grpo-direct", "(b) HCA (greedy)"), "seed_deltas"] == "+0.0;+0.0;+0.0"
    assert not lc.loc[("grpo-direct", "(b) HCA (greedy)"), "learns"]

def test_command_line_trains_and_writes_tables(tmp_path):
    "`python -m hvr_nbs.vl_taxon` (what `accelerate launch -m` runs) trains an SFT start and its GRPO, and writes its tables on CPU."
    import os, subprocess, sys
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1", HVR_CACHE=os.environ.get("HVR_CACHE") or str(tmp_path/"cache"))
    out = tmp_path/"run"
    cmd = [sys.executable, "-m", "hvr_nbs.vl_taxon", "--profile", "smoke", "--methods", "zero-shot,vl-taxon", "--steps", "1",
           "--n-eval", "2", "--out", str(out), "--set", "train__sft_steps=2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    pred = pd.read_csv(out/"predictions.csv")
    assert set(pred["method"]) == {"zero-shot", "vl-taxon-sft", "vl-taxon"}
    assert (pred.groupby("method").size() == 2 * len(RANKS)).all()
    for f in ("metrics.csv", "table3.csv", "learning_check.csv", "manifest.json"): assert (out/f).exists(), f
    lc = pd.read_csv(out/"learning_check.csv")
    assert set(lc["method"]) == {"vl-taxon"} and lc["metric"].str.startswith("(a)").any()
    assert (out/"vl-taxon-s0"/"train_log.csv").exists() and (out/"vl-taxon-s0"/"completions.csv").exists()

@pytest.mark.parametrize("name", ["inat21", "cub"])
def test_paper_profile_reads_the_official_layouts(name, tmp_path):
    "The `paper` branch of `vl_taxon_images` on the loaders' generated fixtures (iNat21 / CUB-200 official layouts)."
    from hvr_nbs.loaders import make_fixture
    make_fixture(name, tmp_path/name, n_classes=6, n_per_class=10)  # iNat21: 10 train_mini images per species, 5 val
    prof = get_profile("paper", data_root=str(tmp_path))
    d = vl_taxon_images(prof, dataset=name)
    leaf = d["taxonomy"].leaf_rank
    assert len(d["sft"]) and len(d["grpo"]) and len(d["test"])
    assert set(d["sft"][leaf]) == set(d["grpo"][leaf])  # every species in both halves, on different images
    assert not set(d["sft"]["image_id"]) & set(d["grpo"]["image_id"])
    if name == "inat21":  # the paper: iNat21-Plant training images, Tan et al.'s Plant and Animal test sets, kingdom not scored
        assert d["ranks"] == ("family", "genus", "species") and d["domain"] == "plant"  # the fixture's 2 plants: one order
        assert set(d["sft"]["kingdom"]) == set(d["grpo"]["kingdom"]) == {"Plantae"}
        assert (pd.Series(list(d["sft"][leaf]) + list(d["grpo"][leaf])).value_counts() == 10).all()  # 10 images per species
        assert list(d["tests"]) == ["iNat21-Plant", "iNat21-Animal"] and d["test_name"] == "iNat21-Plant"
        assert set(d["tests"]["iNat21-Animal"]["images"]["kingdom"]) == {"Animalia"}
        assert d["tests"]["iNat21-Animal"]["ranks"] == ("order", "family", "genus", "species")  # one phylum and class: not asked
    else:
        assert d["domain"] == "bird" and d["ranks"] == RANKS and list(d["tests"]) == ["CUB-200"]
    q = vl_taxon_questions(d["test"], d["taxonomy"], None, domain=d["domain"], ranks=d["ranks"])
    assert set(q["rank"]) == set(d["ranks"]) and all(a in "ABCD" for a in q["answer"])  # a rank with one name is not asked
    assert len(stage1_rows(d["sft"], d["ranks"], d["domain"])) == len(d["sft"])

def test_paper_training_selection_and_too_few_images(tmp_path):
    "3,771 species x 10 images (the paper) as a seeded rule; species with fewer than 10 images are never drawn."
    import datasets as hfds
    from hvr_nbs.vl_taxon import paper_train_selection
    ds = hfds.Dataset.from_dict(dict(species=[f"s{i % 30}" for i in range(600)] + ["rare"] * 9, image_id=list(map(str, range(609)))))
    sel = paper_train_selection(ds, n_species=25, n_per_species=10, seed=3)
    counts = pd.Series(sel["species"]).value_counts()
    assert len(counts) == 25 and (counts == 10).all() and "rare" not in counts
    assert sel["image_id"] == paper_train_selection(ds, n_species=25, n_per_species=10, seed=3)["image_id"]
    assert set(paper_train_selection(ds, n_species=25, seed=4)["species"]) != set(counts.index)
    with pytest.raises(ValueError, match="no species has 50 or more"): paper_train_selection(ds, n_per_species=50)

def test_every_test_set_is_scored_and_tabled(tmp_path, monkeypatch):
    "A run on iNat21 fixtures is scored on iNat21-Plant and iNat21-Animal, each on its own ranks and domain, one table per set."
    import hvr_nbs.vl_taxon as vt
    from hvr_nbs.core import TEST_OVERRIDES
    from hvr_nbs.loaders import make_fixture
    make_fixture("inat21", tmp_path/"inat21", n_classes=6, n_per_class=10)
    prof = get_profile("smoke", **TEST_OVERRIDES, data_root=str(tmp_path))
    imgs = vl_taxon_images(prof)
    monkeypatch.setattr("hvr_nbs.models.load_encoder", lambda *a, **k: None)  # SigLIP is not here:
    monkeypatch.setattr(vt, "_similarity_for", lambda prof, tax, enc=None: None)  # random distractors
    Q = vt.vl_taxon_all_questions(imgs, prof)
    assert list(Q["extra"]) == ["iNat21-Animal"] and set(Q["extra"]["iNat21-Animal"]["rank"]) == {"order", "family", "genus", "species"}
    assert "kingdom" not in set(Q["test"]["rank"]) | set(Q["extra"]["iNat21-Animal"]["rank"])
    assert "Given the animal" in Q["extra"]["iNat21-Animal"][0]["prompt"][0]["content"][1]["text"]
    r = vt.run_method("zero-shot", imgs, Q, prof, "tiny-qwen2.5-vl", n_eval=2, sampled=False, out_dir=tmp_path/"zs")
    assert set(r.results["test_set"]) == {"iNat21-Plant", "iNat21-Animal"}
    n = r.results.groupby("test_set").size()  # 2 images x each set's own ranks
    assert n["iNat21-Plant"] == 2 * len(imgs["ranks"]) and n["iNat21-Animal"] == 2 * len(imgs["tests"]["iNat21-Animal"]["ranks"])
    assert "HCA" in r.metrics and "iNat21-Animal/HCA" in r.metrics
    t = vt.tables_per_test_set(r.results, imgs, Q, n_eval=2)
    assert list(t) == ["iNat21-Plant", "iNat21-Animal"]
    assert {f"Acc_{k}" for k in ("order", "family", "genus", "species")} <= set(t["iNat21-Animal"].columns)
    assert "Acc_kingdom" not in t["iNat21-Animal"] and "Acc_order" not in t["iNat21-Plant"]
    assert t["iNat21-Animal"].loc["zero-shot", "images"] == 2

def test_lora_sft_then_grpo_handoff(small, tmp_path):
    "With LoRA (the paper's r = alpha = 64) the SFT start is saved merged, and GRPO trains on it end to end."
    from hvr_nbs.core import TEST_OVERRIDES
    from hvr_nbs.vl_taxon import run_method
    imgs, Q = small
    prof = get_profile("smoke", **TEST_OVERRIDES, model__lora=True, model__lora_r=64, model__lora_alpha=64)
    sft = run_method("vl-taxon-sft", imgs, Q, prof, "tiny-qwen2.5-vl", n_eval=1, sampled=False, out_dir=tmp_path/"sft",
                     keep_model=True)
    assert (sft.model_dir/"config.json").exists() and not (sft.model_dir/"adapter_config.json").exists()  # adapter merged
    rl = run_method("vl-taxon", imgs, Q, prof, sft.model_dir, n_eval=1, out_dir=tmp_path/"rl")
    assert len(rl.log) and (rl.log["phase"] == "grpo").all() and "sampled stage-1 leaf accuracy" in rl.metrics
