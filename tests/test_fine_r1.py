"Tests for the Fine-R1 notebook's helpers and TAPO trainer (hvr_nbs.fine_r1): prompts, options, rationales, the KL, and one TAPO batch on a tiny model."
import math, tempfile
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hvr_nbs.core import get_profile
from hvr_nbs.taxonomy import Taxonomy
from hvr_nbs.fine_r1 import (fine_r1_prompt, similar_leaves, closed_options, cot_rationale, answer_of, tapo_kl, mask_patches,
                             paper_table, fine_r1_settings, PAPER_SETTINGS, TAPOTrainer, question_rows, fine_r1_splits, tapo_rows)
from hvr_nbs.runs import settings_table, check_settings, paper_profile
from hvr_nbs.rewards import fine_r1_accuracy_reward, fine_r1_format_reward


@pytest.fixture(scope="module")
def world():
    from hvr_nbs.synthetic import make_world
    return make_world("smoke")


def test_closed_options_shuffled_and_complete(world):
    tax = world.taxonomy
    firsts = []
    for i, leaf in enumerate(tax.leaves):
        opts = closed_options(tax, leaf, seed=i)
        assert len(opts) == 4 and len(set(opts)) == 4 and leaf in opts
        assert closed_options(tax, leaf, seed=i) == opts  # seeded
        assert closed_options(tax, leaf, seed=i, shuffle=False)[0] == leaf  # the released layout
        firsts.append(opts[0] == leaf)
    assert 0.05 < np.mean(firsts) < 0.6  # the truth is not always first
    sib = similar_leaves(tax, tax.leaves[0], 1)[0]
    assert tax.name_at(sib, "genus") == tax.name_at(tax.leaves[0], "genus")  # the nearest leaf is the sibling


def test_prompts_carry_options_in_order():
    p = fine_r1_prompt("species", "bird", ["b", "a", "c", "d"])
    assert "[b, a, c, d]" in p and "<answer>choice</answer>" in p
    assert "Options: b, a, c, d." in fine_r1_prompt(options=["b", "a", "c", "d"], style="short")
    with pytest.raises(ValueError): fine_r1_prompt(style="other")


def test_cot_rationale_shape(world):
    tax = world.taxonomy
    for i, leaf in enumerate(tax.leaves[:6]):
        short = cot_rationale(leaf, tax, seed=i)
        assert short.startswith("<think>") and short.endswith(f"</think><answer>{leaf}</answer>")
        assert fine_r1_format_reward([short]) == [1.0] and fine_r1_accuracy_reward([short], answer=[leaf]) == [1.0]
        full = cot_rationale(leaf, tax, world.traits(leaf), n_candidates=4, style="full", seed=i)
        assert all(k in full for k in ("Visual analysis", "Candidates", "Comparison")) and full.count(leaf) >= 3


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_answer_of_and_rewards_never_raise(text):
    a = answer_of(text)
    assert isinstance(a, str)
    assert fine_r1_accuracy_reward([text], answer=["Cila x"])[0] in (0.0, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-20, 0), min_size=1, max_size=6), st.lists(st.floats(-20, 0), min_size=1, max_size=6))
def test_tapo_kl_nonnegative_zero_iff_equal_and_clamped(a, b):
    n = min(len(a), len(b)); x, y = torch.tensor([a[:n]]), torch.tensor([b[:n]])
    for form in ("code", "paper"):
        k = tapo_kl(x, y, form=form)
        assert (k >= -1e-6).all() and (k <= 10.0).all()
        assert torch.allclose(tapo_kl(x, x, form=form), torch.zeros_like(x), atol=1e-6)


def test_tapo_kl_forms_are_mirror_images():
    a, b = torch.tensor([[-1.0]]), torch.tensor([[-2.5]])
    assert tapo_kl(a, b, form="code").item() == pytest.approx(math.exp(-1.5) + 1.5 - 1)
    assert tapo_kl(a, b, form="paper").item() == pytest.approx(math.exp(1.5) - 1.5 - 1)
    with pytest.raises(ValueError): tapo_kl(a, b, form="x")


def test_mask_patches(world):
    im = world.render(world.taxonomy.leaves[0], 0)[0]
    a = np.asarray(mask_patches(im, 1.0)); assert (a == 0).all()
    assert (np.asarray(mask_patches(im, 0.0)) == np.asarray(im.convert("RGB"))).all()


def test_paper_settings_are_what_the_paper_run_uses():
    cols = lambda p: (p, {k: fine_r1_settings(p)[k] for k in ("grpo", "sft", "tapo")})
    t = settings_table(PAPER_SETTINGS, {"paper run": cols(paper_profile(PAPER_SETTINGS)), "smoke run": cols(get_profile("smoke"))})
    check_settings(t, "paper run")
    g = fine_r1_settings(get_profile("paper"))["grpo"]
    assert (g["learning_rate"], g["epsilon"], g["epsilon_high"], g["beta"], g["top_p"]) == (1e-6, 0.2, 0.28, 0.0, 0.99)
    assert paper_table("table2").loc["Fine-R1-3B", "avg"] == 67.32


@pytest.fixture(scope="module")
def tapo_batch(world):
    "A TAPOTrainer on the offline tiny VLM and one batch of 2 prompts x (2 anchor + 2 positive) rollouts."
    from hvr_nbs.models import load_vlm
    from hvr_nbs.training import grpo_config
    torch.set_num_threads(1)
    prof = get_profile("smoke")
    train = world.dataset(n_per_species=3, seed=1, species=world.taxonomy.leaves[:6])
    data = fine_r1_splits(train, train, world.taxonomy, k=2, n_sft=1)
    rows = tapo_rows(data["rl"], world.taxonomy, style="short")
    def make(**kw):
        model, proc = load_vlm("tiny-qwen2.5-vl", device="cpu"); proc.tokenizer.padding_side = "left"
        args = grpo_config(prof, tempfile.mkdtemp(), max_steps=1, num_generations=4, per_device_train_batch_size=8, max_completion_length=6,
                           temperature=1.0, loss_type="dapo", beta=0.0, report_to=[], reward_weights=[0.9, 0.1])
        tr = TAPOTrainer(model=model, reward_funcs=[fine_r1_accuracy_reward, fine_r1_format_reward], args=args,
                         train_dataset=rows.select_columns(["image", "positive_image", "negative_image", "prompt", "answer"]),
                         processing_class=proc, **kw)
        tr.current_gradient_accumulation_steps = 1
        tr.model.train(); torch.manual_seed(0)
        return tr, tr._generate_and_score_completions([dict(rows[i]) for i in (0, 1) for _ in range(4)])
    return make


def test_tapo_pools_groups_over_2n(tapo_batch):
    tr, out = tapo_batch()
    assert out["tapo_positive"].tolist() == [False, False, True, True] * 2
    assert torch.allclose(out["advantages"].view(2, 4).sum(1), torch.zeros(2), atol=1e-4)
    assert len(out["neg_pixel_values"]) == 8


def test_tapo_conditioning_and_kl_gradient(tapo_batch):
    tr, out = tapo_batch()
    own, out_own = tapo_batch(conditioning="own")
    own.model.load_state_dict(tr.model.state_dict())
    assert torch.equal(out["completion_ids"], out_own["completion_ids"])
    with torch.no_grad():
        a, b = tr._logps(tr.model, out, out["pixel_values"]), tr._logps(tr.model, out_own, out_own["pixel_values"])
    pos = out["tapo_positive"]
    assert torch.allclose(a[~pos], b[~pos], atol=1e-5) and (a[pos] - b[pos]).abs().max() > 1e-5
    def grads(t):
        t.model.zero_grad(); t._compute_loss(t.model, out).backward()
        return torch.cat([p.grad.flatten() for p in t.model.parameters() if p.grad is not None]).clone()
    g1 = grads(tr); tr.tapo_gamma = 0.0; g0 = grads(tr)
    assert (g1 - g0).abs().max() > 0
    tr.tapo_eta1 = 0.0; tr.tapo_eta2 = 0.03
    only = dict(out, advantages=torch.zeros_like(out["advantages"]))
    tr.model.zero_grad(); tr._compute_loss(tr.model, only).backward()
    assert max(p.grad.abs().max().item() for p in tr.model.parameters() if p.grad is not None) > 0


def test_tapo_all_positive_is_table3a_last_row(tapo_batch):
    tr, out = tapo_batch(n_positive=4)  # n1 : n2 = 0 : G, every rollout on the positive image, updated under the anchor
    assert out["tapo_positive"].all() and len(out["neg_pixel_values"]) == 8


def test_tapo_rejects_bad_settings(tapo_batch):
    with pytest.raises(ValueError): tapo_batch(n_positive=5)
    with pytest.raises(ValueError): tapo_batch(n_positive=-1)
    with pytest.raises(ValueError): tapo_batch(conditioning="positive")
