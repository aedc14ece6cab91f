"TARA (hvr_nbs.tara): the alignment losses, the layer / token selection, and TARATrainer's gradients on an untrained tiny VLM."
import contextlib, io, tempfile
from pathlib import Path
import pytest
import torch
from trl import GRPOTrainer
from hvr_nbs.core import get_profile
from hvr_nbs.models import load_vlm, TinyClip, TinyClipEncoder
from hvr_nbs.synthetic import make_world
from hvr_nbs.training import grpo_config
from hvr_nbs.rewards import tara_no_thinking_reward
from hvr_nbs.runs import settings_table, check_settings, paper_profile
from hvr_nbs.tara import (tara_questions, tara_projector, match_length, visual_alignment_loss, label_alignment_loss, layer_module,
                          TARATrainer, LEVEL_WEIGHTS, PAPER_SETTINGS, PROJECTORS_FILE, tara_recipe, paper_table, novel_leaves, _ratio)

torch.set_num_threads(1)


def test_losses_bounds_and_teacher_gradient():
    t = torch.randn(3, 64, 8)
    assert visual_alignment_loss([x[torch.linspace(0, 63, 16).round().long()] for x in t], list(t)).item() == pytest.approx(0.0, abs=1e-4)
    a, b = torch.randn(16, 8, requires_grad=True), torch.randn(64, 8, requires_grad=True)
    visual_alignment_loss([a], [b]).backward()
    assert a.grad is not None and b.grad is None
    u = torch.randn(4, 8)
    assert label_alignment_loss(-u, u).item() == pytest.approx(2.0, abs=1e-5)
    x, y = match_length(torch.zeros(5, 2), torch.zeros(9, 2))
    assert x.shape == y.shape == (5, 2)


def test_projector_is_three_layer_silu_mlp():
    p = tara_projector(10, 7, 16)
    assert [type(m).__name__ for m in p] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"] and p(torch.zeros(2, 10)).shape == (2, 7)


def test_questions_ratio_and_forms():
    w = make_world("smoke"); ims = w.dataset(n_per_species=4, seed=3)
    q = tara_questions(ims, w.taxonomy, rank_weights=LEVEL_WEIGHTS, seed=0)
    counts = q.to_pandas()["rank"].value_counts()
    assert counts["species"] > counts["genus"] > counts["order"]
    c = tara_questions(ims.select(range(4)), w.taxonomy, form="choice", ranks=["family"])
    assert all(r["answer"] in r["prompt"][0]["content"][-1]["text"] for r in c)
    assert all(r["prompt"][0]["content"][-1]["text"].endswith("Please directly output the answer.") for r in c)


def test_paper_settings_and_tables():
    check_settings(settings_table(PAPER_SETTINGS, {"paper run": (paper_profile(PAPER_SETTINGS), tara_recipe(get_profile("paper")))}))
    assert _ratio("order:family:genus:species = 1:2:4:8")["species"] == 8.0
    assert paper_table(2).loc[("Qwen2.5-VL-3B", "TARA"), ("iNat21-Animal", "TOR")] == 66.11


@pytest.fixture(scope="module")
def setup():
    w = make_world("smoke")
    rows = tara_questions(w.dataset(n_per_species=1, seed=5).select(range(8)), w.taxonomy, rank_weights=LEVEL_WEIGHTS, seed=0)
    teacher = TinyClipEncoder(TinyClip(image_size=112, width=32, depth=1, heads=2, embed_dim=16))
    return rows, teacher


def _trainer(rows, teacher, cls=TARATrainer, reward=None, **kw):
    model, proc = load_vlm("tiny-qwen2.5-vl", device="cpu"); proc.tokenizer.padding_side = "left"
    conf = grpo_config("smoke", tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=8, num_generations=4, learning_rate=1e-3,
                       temperature=1.0, max_completion_length=4, seed=0, disable_tqdm=True, logging_steps=1)
    extra = dict(teacher=teacher, projector_hidden=32, **kw) if cls is TARATrainer else {}
    reward = reward or (lambda completions, **k: [0.0] * len(completions))
    return cls(model=model, reward_funcs=[reward], args=conf, train_dataset=rows, processing_class=proc, **extra)


def test_alignment_reaches_the_llm_and_lowers_the_loss(setup):
    rows, teacher = setup
    tr = _trainer(rows, teacher); tr.model.train(); tr.current_gradient_accumulation_steps = 1
    batch = tr._generate_and_score_completions([rows[i] for i in range(8)])
    assert batch["advantages"].abs().sum() == 0  # constant reward: no RL signal
    opt = tr.create_optimizer()
    tr.model.zero_grad(); tr._compute_loss(tr.model, batch).backward()
    lv0, lt0 = tr._metrics["train"]["tara/visual_loss"][-1], tr._metrics["train"]["tara/text_loss"][-1]
    assert sum(p.grad.abs().sum().item() for n, p in tr.model.named_parameters() if p.grad is not None and "language_model" in n) > 0
    assert all(p.grad is not None for p in tr.tara_projectors.parameters())
    assert all(p.grad is None for p in teacher.model.parameters())
    opt.step(); opt.zero_grad()
    tr._compute_loss(tr.model, batch)
    assert tr._metrics["train"]["tara/visual_loss"][-1] < lv0 and tr._metrics["train"]["tara/text_loss"][-1] < lt0


def test_hooked_states_are_the_named_layer_and_tokens(setup):
    rows, teacher = setup
    tr = _trainer(rows, teacher, visual_layer=1); tr.model.train()
    b = tr._generate_and_score_completions([rows[i] for i in range(8)])
    ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1); am = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
    inp = dict(input_ids=ids, attention_mask=am, pixel_values=b["pixel_values"], image_grid_thw=b["image_grid_thw"])
    with torch.no_grad():
        hs = tr.model(**inp, output_hidden_states=True).hidden_states
        with tr._capture(tr.model) as st: tr.model(**inp)
    P = b["prompt_ids"].shape[1]; img = b["prompt_ids"] == tr.model.config.image_token_id
    assert img.sum() > 0
    torch.testing.assert_close(st["visual"][0][:, :P][img], hs[1][:, :P][img])
    torch.testing.assert_close(st["text"][0][:, P], hs[-1][:, P])
    with pytest.raises(ValueError, match="layer must be in"): layer_module(tr.model, 0)


def test_weight_zero_equals_plain_grpo(setup):
    rows, teacher = setup
    def step(cls, **kw):
        t = _trainer(rows, teacher, cls, reward=tara_no_thinking_reward, **kw); t.train()
        return {n: p.detach().clone() for n, p in t.model.named_parameters()}
    a, b = step(GRPOTrainer), step(TARATrainer, visual_weight=0.0, text_weight=0.0)
    assert max((a[n] - b[n]).abs().max().item() for n in a) == 0.0


def test_batched_and_weighted_visual_loss_match_per_row():
    p, q = torch.randn(3, 16, 8), torch.randn(3, 64, 8)
    assert visual_alignment_loss(p, q).item() == pytest.approx(visual_alignment_loss(list(p), list(q)).item(), abs=1e-6)
    twice = visual_alignment_loss(torch.cat([p, p[:1]]), torch.cat([q, q[:1]])).item()
    assert visual_alignment_loss(p, q, weights=[2, 1, 1]).item() == pytest.approx(twice, abs=1e-6)
    assert visual_alignment_loss(p, q, weights=[5, 1, 1]).item() != pytest.approx(twice, abs=1e-4)  # the weights count


def test_novel_leaves_split():
    w = make_world("smoke"); tax = w.taxonomy
    nv = novel_leaves(tax, 4, seed=0)
    assert len(nv) == 4 and nv == novel_leaves(tax, 4, seed=0) and nv != novel_leaves(tax, 4, seed=1)
    genera = [tax.name_at(l, tax.ranks[-2]) for l in nv]
    assert len(set(genera)) == 4 and all(len(tax.leaves_under(g)) > 1 for g in genera)


def test_one_row_per_prompt_gives_the_same_loss_and_gradients(setup):
    rows, teacher = setup
    tr = _trainer(rows, teacher); tr.model.train(); tr.current_gradient_accumulation_steps = 1
    b = tr._generate_and_score_completions([rows[i // 4] for i in range(8)])
    assert b["tara_group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and len(tr._teacher_cache["image"]) == 2
    def grads(batch):
        tr.model.zero_grad(); tr.tara_projectors.zero_grad(); tr._compute_loss(tr.model, batch).backward()
        return torch.cat([p.grad.flatten() for p in [*tr.model.parameters(), *tr.tara_projectors.parameters()] if p.grad is not None])
    torch.testing.assert_close(grads(b), grads({k: v for k, v in b.items() if k != "tara_group"}), atol=1e-5, rtol=1e-4)


def test_resume_restores_projectors_and_matches_an_uninterrupted_run(setup):
    from safetensors.torch import load_file
    from hvr_nbs.training import train_grpo
    rows, teacher = setup
    def run(steps, ck=None):
        conf = grpo_config("smoke", tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=8, num_generations=4, learning_rate=1e-3,
                           temperature=1.0, max_completion_length=4, seed=0, disable_tqdm=True, logging_steps=1, save_strategy="steps", save_steps=1)
        with contextlib.redirect_stdout(io.StringIO()):
            return train_grpo("tiny-qwen2.5-vl", None, rows, [tara_no_thinking_reward], conf, trainer_cls=TARATrainer, resume_from_checkpoint=ck,
                              teacher=teacher, projector_hidden=32, device="cpu")
    full = run(2)
    ck = Path(full.args.output_dir)/"checkpoint-1"
    saved = load_file(str(ck/PROJECTORS_FILE))
    opt = torch.load(ck/"optimizer.pt", weights_only=False)
    assert opt["param_groups"][-1].get("tara") and all(i in opt["state"] for i in opt["param_groups"][-1]["params"])  # Adam state saved
    res = run(2, ck)
    assert res.state.global_step == 2
    assert any(not torch.equal(saved[k], v) for k, v in res.tara_projectors.state_dict().items())  # step 2 trained them further
    for k, v in full.tara_projectors.state_dict().items(): assert torch.equal(res.tara_projectors.state_dict()[k], v), k
    for k, v in full.model.state_dict().items(): assert torch.equal(res.model.state_dict()[k], v), k
