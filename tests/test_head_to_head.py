"Fast tests of the head-to-head comparison (15_head_to_head): the budget, the statistics, the table and the readers; no training."
import math
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from hvr_nbs.head_to_head import (METHODS, METRICS, CONTROL, PER_RANK, equal_budget, generated_tokens, welch_test, holm,
                                  compare_to_control, head_to_head_table, paper_claims, read_predictions, vl_taxon_stage1_path,
                                  taxonrl_single_target, taxonrl_rank_reward, h2h_profile, grpo_stage)

RANKS = ["order", "family", "genus", "species"]
ROW = dict(order="Tiabriformes", family="Mialidae", genus="Cila", species="Cila beuphubus")


def _per_run(values):  # method -> seed values, the same for every metric
    rows = [dict(method=m, seed=s, **{k: v for k in METRICS}) for m, vs in values.items() for s, v in enumerate(vs)]
    df = pd.DataFrame(rows)
    return df.assign(**{"completions": 192, "train tokens": 100.0, "SFT examples": 0, "train s": 2.0, "eval s": 1.0,
                        "tokens per test image": 4.0})


def test_equal_budget_gives_every_method_the_same_completions():
    per_step = {"grpo": 16, "taxonrl": 32, "visual-rft": 8, "fine-r1": 16, "vl-taxon": 64, "tara": 4}
    steps = equal_budget(384, per_step)
    assert {m: steps[m] * c for m, c in per_step.items()} == {m: 384 for m in per_step}
    assert steps["tara"] == 96 and steps["vl-taxon"] == 6


@pytest.mark.parametrize("budget,per_step", [(100, {"grpo": 16}), (192, {"grpo": 0}), (10, {"a": 5, "b": 4})])
def test_equal_budget_refuses_a_budget_that_is_not_whole_steps(budget, per_step):
    with pytest.raises(ValueError, match="not a whole number of steps"): equal_budget(budget, per_step)


def test_the_smoke_recipe_budget_is_whole_steps_for_every_method():
    p = h2h_profile("smoke")
    steps = equal_budget(p.train.grpo_steps * p.train.per_device_batch, {m: p.train.per_device_batch for m in METHODS})
    assert set(steps.values()) == {p.train.grpo_steps} and p.train.per_device_batch % p.train.num_generations == 0


def test_generated_tokens_counts_grpo_steps_only():
    log = pd.DataFrame({"phase": ["sft", "grpo", "grpo", "grpo"], "completions/mean_length": [50.0, 2.0, 4.0, np.nan]})
    assert generated_tokens(log, 16) == 16 * 6


def test_welch_on_a_known_case():
    t, p = welch_test([1, 2, 3], [4, 5, 6])  # equal variances 1: t = -3 / sqrt(2/3), df = 4
    assert math.isclose(t, -3 / math.sqrt(2 / 3), rel_tol=1e-12)
    assert math.isclose(p, 2 * stats.t.sf(3 / math.sqrt(2 / 3), df=4), rel_tol=1e-12)
    t2, p2 = welch_test([1.0, 2.0, 9.0], [4.0, 4.5, 5.0])  # unequal variances: scipy's Welch, not Student's
    assert math.isclose(p2, stats.ttest_ind([1.0, 2.0, 9.0], [4.0, 4.5, 5.0], equal_var=False).pvalue, rel_tol=1e-12)
    assert not math.isclose(p2, stats.ttest_ind([1.0, 2.0, 9.0], [4.0, 4.5, 5.0]).pvalue, rel_tol=1e-3)


def test_welch_edge_cases():
    assert welch_test([3, 3, 3], [3, 3, 3]) == (0.0, 1.0)
    assert welch_test([4, 4, 4], [3, 3, 3])[1] == 0.0
    with pytest.raises(ValueError, match="at least two"): welch_test([1], [1, 2])


def test_holm():
    h = holm([0.01, 0.04, np.nan, 0.03])
    assert np.allclose(h[[0, 1, 3]], [0.03, 0.06, 0.06]) and np.isnan(h[2])
    assert np.allclose(holm([0.5, 0.6]), [1.0, 1.0])


def test_compare_to_control_flags_a_clear_difference_and_not_noise():
    c = compare_to_control(_per_run({"grpo": [10, 11, 12], "big": [40, 41, 42], "same": [11, 10, 12]}))
    assert c.query("method == 'big'")["significant"].all() and not c.query("method == 'same'")["significant"].any()
    assert np.allclose(c.query("method == 'big'")["diff"], 30.0)
    assert c.query(f"method == '{CONTROL}'")["p"].isna().all()
    with pytest.raises(ValueError, match="control"): compare_to_control(_per_run({"a": [1, 2]}))


def test_head_to_head_table_columns_and_rows():
    tab = head_to_head_table(_per_run({"grpo": [10, 11, 12], "tara": [20, 21, 22], "taxonrl": [11, 12, 13]}))
    assert list(tab.index) == ["grpo", "tara", "taxonrl"]
    assert list(tab.columns) == [c for k in METRICS for c in (k, f"{k} sd", f"{k} p")] + \
        ["seeds", "completions", "train tokens", "SFT examples", "train s", "eval s", "tokens per test image"]
    assert tab.loc["tara", "HCA"] == 21.0 and tab.loc["tara", "HCA sd"] == 1.0 and np.isnan(tab.loc["grpo", "HCA p"])
    assert (tab["seeds"] == 3).all()


def test_paper_claims_cover_every_non_control_method():
    c = paper_claims()
    assert set(c["method"]) == set(METHODS) - {CONTROL}
    assert c["claimed gain (points)"].notna().all() and c["source"].str.len().gt(0).all()


def test_readers_give_one_name_per_rank():
    good = taxonrl_single_target(ROW, RANKS)
    p = read_predictions("taxonrl", {"image_id": ["1"], "rank": ["path"]}, [good], RANKS)
    assert p["rank"].tolist() == RANKS and p["pred"].tolist() == [ROW[r] for r in RANKS]
    vl = "<think>order Tiabriformes, family Mialidae, genus Cila</think><answer>Cila beuphubus</answer>"
    assert vl_taxon_stage1_path(vl, RANKS) == ROW
    assert read_predictions("fine-r1", {"image_id": ["1"], "rank": ["genus"]}, ["<think>a</think><answer>Cila</answer>"], RANKS)["pred"].item() == "Cila"
    assert read_predictions("visual-rft", {"image_id": ["1"], "rank": ["genus"]}, ["Cila"], RANKS)["pred"].item() is None  # no tag: no answer
    with pytest.raises(ValueError, match="Unknown method"): read_predictions("dpo", {"image_id": ["1"], "rank": ["genus"]}, ["x"], RANKS)


def test_taxonrl_rank_reward_scores_each_upper_rank():
    good = taxonrl_single_target(ROW, RANKS)
    truth = {r: [ROW[r]] * 3 for r in RANKS[:-1]}
    out = taxonrl_rank_reward([good, good.replace("<family>Mialidae</family>", "<family>Xidae</family>"), "no tags"], **truth)
    assert out == [1.0, 2 / 3, 0.0]


def test_every_method_has_a_grpo_stage_with_the_budgeted_steps():
    p = h2h_profile("smoke")
    stages = {m: grpo_stage(m, p, rows=None, steps=7, teacher=object()) for m in METHODS}
    assert {s["max_steps"] for s in stages.values()} == {7}
    assert all(s["logging_steps"] == 1 for s in stages.values())  # tokens are counted from one log row per step
    assert stages["fine-r1"]["dynamic_sampling_max_retries"] == 0  # no completions beyond the budget
    assert set(PER_RANK) < set(METHODS)
