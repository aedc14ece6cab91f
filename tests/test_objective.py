"hvr_nbs.objective against plain references (NumPy, a loop over tokens) and against TRL's GRPOTrainer with gradient accumulation."
import math, random, tempfile, warnings
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hvr_nbs.objective import (group_advantages, clipped_surrogate, k3_kl, aggregate_loss, grpo_loss, grpo_loss_kwargs,
                               LossRecorderMixin, GRPO_SYMBOLS)

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")


@settings(max_examples=60, deadline=None)
@given(groups=st.integers(1, 4), G=st.integers(2, 6), seed=st.integers(0, 10_000), scale=st.sampled_from(["group", "batch", "none"]))
def test_group_advantages_match_numpy(groups, G, seed, scale):
    r = np.random.default_rng(seed).integers(0, 3, groups * G).astype(np.float32) / 2  # ties and zero-spread groups happen
    g = r.reshape(groups, G)
    adv = g - g.mean(1, keepdims=True)
    if scale == "group": adv = adv / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    if scale == "batch": adv = adv / (r.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(group_advantages(r, G, scale).numpy(), adv.ravel(), atol=1e-4, rtol=1e-5)


def _loop_loss(logps, old, ref, adv, mask, eps, eps_high, delta, beta, loss_type, L, kl_ratio):
    "TRL 1.16's loss written token by token in plain Python, the reference for `grpo_loss`."
    eps_high = eps if eps_high is None else eps_high
    B, T = len(logps), len(logps[0])
    per_seq, total, n_tok = [], 0.0, 0
    for i in range(B):
        s, n = 0.0, 0
        for t in range(T):
            if not mask[i][t]: continue
            r = math.exp(logps[i][t] - old[i][t])
            capped = r if delta is None else min(r, delta)
            ell = -min(capped * adv[i], min(max(r, 1 - eps), 1 + eps_high) * adv[i])
            if beta:
                d = ref[i][t] - logps[i][t]
                ell += beta * (math.exp(d) - d - 1) * (r if kl_ratio else 1.0)
            s, n = s + ell, n + 1
        per_seq.append(s / max(n, 1)); total += s; n_tok += n
    return {"grpo": sum(per_seq) / B, "dapo": total / max(n_tok, 1), "bnpo": total / max(n_tok, 1), "dr_grpo": total / (B * L)}[loss_type]


@settings(max_examples=80, deadline=None)
@given(B=st.integers(1, 5), T=st.integers(1, 6), seed=st.integers(0, 10_000), loss_type=st.sampled_from(LOSS_TYPES),
       eps_high=st.sampled_from([None, 0.28]), delta=st.sampled_from([None, 1.5, 3.0]), beta=st.sampled_from([0.0, 0.04]),
       kl_ratio=st.booleans())
def test_grpo_loss_matches_token_loop(B, T, seed, loss_type, eps_high, delta, beta, kl_ratio):
    g = torch.Generator().manual_seed(seed)
    logps, old, ref = (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.5 - 2 for _ in range(3))
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    loss, logged = grpo_loss(logps, old, ref, adv, mask, 0.2, eps_high, delta, beta, loss_type, max_completion_length=T, kl_ratio=kl_ratio)
    want = _loop_loss(logps.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, eps_high, delta, beta, loss_type, T, kl_ratio)
    assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert ("kl" in logged) == (beta != 0.0)
    assert logged["clip_ratio/region_mean"] == pytest.approx(logged["clip_ratio/low_mean"] + logged["clip_ratio/high_mean"])


def test_clipped_tokens_get_no_gradient():
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(5.0), math.log(1.1)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    clipped_surrogate(logp.exp(), adv, 0.2, 0.28, delta=3.0).sum().backward()
    assert logp.grad.tolist()[0][:3] == [0.0, 0.0, 0.0] and logp.grad[0, 3].item() == pytest.approx(-1.1)


def test_k3_is_nonnegative_and_zero_on_equal():
    x, y = torch.randn(500), torch.randn(500)
    assert (k3_kl(x, y) >= 0).all() and k3_kl(x, x).abs().max() == 0


def test_aggregate_rejects_unknown_and_needs_length():
    with pytest.raises(ValueError, match="max_completion_length"): aggregate_loss(torch.ones(2, 2), torch.ones(2, 2), "dr_grpo")
    with pytest.raises(ValueError, match="loss_type"): aggregate_loss(torch.ones(2, 2), torch.ones(2, 2), "gspo")


def _config(**kw):
    from trl import GRPOConfig
    warnings.filterwarnings("ignore", category=FutureWarning)
    return GRPOConfig(**(dict(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none") | kw))


@pytest.mark.parametrize("field,value", [("importance_sampling_level", "sequence"), ("loss_type", "cispo"), ("top_entropy_quantile", 0.5),
                                         ("off_policy_mask_threshold", 0.1), ("entropy_coef", 0.01)])
def test_kwargs_refuse_what_grpo_loss_leaves_out(field, value):
    args = _config()
    setattr(args, field, value)
    with pytest.raises(NotImplementedError, match=field): grpo_loss_kwargs(args)


def test_symbol_table_names_real_config_fields():
    from hvr_nbs.training import HVRGRPOConfig
    import dataclasses
    fields = {f.name for f in dataclasses.fields(HVRGRPOConfig)}
    assert {s["field"].split(" ")[0] for s in GRPO_SYMBOLS} <= fields


@pytest.fixture(scope="module")
def accumulated_runs():
    "Tiny Qwen2.5-VL GRPO runs with gradient accumulation 2 (two micro-batches per optimizer step), 'dapo' and 'grpo'."
    import datasets as hfds
    from PIL import Image
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOTrainer
    from hvr_nbs.models import load_vlm
    from hvr_nbs.data import user_prompt
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)

    class Recorder(LossRecorderMixin, GRPOTrainer): pass
    colours = [(200, 40, 40), (40, 40, 200), (40, 200, 40), (200, 200, 40)]
    data = hfds.Dataset.from_list([dict(image=Image.new("RGB", (56, 56), c), prompt=user_prompt("What is the family of the animal?"))
                                   for c in colours])
    runs = {}
    for loss_type in ("dapo", "grpo"):
        rng = random.Random(1)
        def reward(completions, **kw): return [rng.random() for _ in completions]
        args = _config(max_steps=2, num_iterations=2, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                       num_generations=4, max_completion_length=10, learning_rate=2e-2, loss_type=loss_type, epsilon_high=0.28,
                       delta=1.5, beta=0.04, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=1, gradient_checkpointing=False)
        model, proc = load_vlm("tiny-qwen2.5-vl", dtype=torch.float32, device="cpu")
        tr = Recorder(model=model, reward_funcs=[reward], args=args, train_dataset=data, processing_class=proc)
        tr.remove_callback(PrinterCallback)
        tr.train()
        runs[loss_type] = tr
    return runs


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_trl_micro_batch_losses_add_up_to_grpo_loss(accumulated_runs, loss_type):
    tr = accumulated_runs[loss_type]
    calls = tr.recorded
    assert len(calls) == 4 and tr.args.steps_per_generation == 2  # 2 optimizer steps x 2 micro-batches of one generation batch
    for step in (calls[0:2], calls[2:4]):
        cat = lambda k: torch.cat([c[k] for c in step])
        ours, _ = grpo_loss(cat("logps"), cat("old_logps"), cat("ref_logps"), cat("advantages"), cat("mask"), **grpo_loss_kwargs(tr.args))
        assert sum(c["loss"].item() for c in step) == pytest.approx(ours.item(), abs=1e-6)
    for i, c in enumerate(calls):  # the logged clip ratios and KL are per micro-batch
        logged = tr.replay(i)[1]
        assert set(logged) == set(c["logged"]) and all(logged[k] == pytest.approx(v, abs=1e-6) for k, v in c["logged"].items())
    ratio = (calls[3]["logps"] - calls[3]["old_logps"]).exp()
    assert ratio.max() > 1.28 and ratio.min() < 0.8  # the second pass is off-policy: the clip is exercised
