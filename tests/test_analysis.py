"Checks of hvr_nbs.analysis: hidden-state extraction on tiny offline Qwen-VL models, and the probes, similarity test and PCA on cases whose answer is known."
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hvr_nbs.models import load_vlm
from hvr_nbs.synthetic import make_world
from hvr_nbs.analysis import (POOLINGS, image_token_id, encode_contexts, forward_hidden_states, pool_states,
                              extract_features, balanced_split, linear_probe, sklearn_probe, probe_table, plot_probe,
                              similarity_partners, genus_similarity, similarity_ttest, plot_similarity, name_pairs,
                              pca_separability, plot_pca)


@pytest.fixture(scope="module")
def world():
    return make_world("smoke")


@pytest.fixture(scope="module")
def images(world):
    ds = world.dataset(n_per_species=1, seed=7).select(range(4))
    return [im.convert("RGB") for im in ds["image"]], list(ds["species"])


@pytest.fixture(scope="module", params=["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def tiny(request):
    model, processor = load_vlm(request.param, device="cpu")
    return model.eval(), processor


QUESTIONS = ["Is the animal species Aus?", "What is the genus of the animal in the image? Answer briefly."]


def test_image_positions_match_a_manual_mask(tiny, images):
    model, proc = tiny
    ims, species = images
    tid = image_token_id(model, proc)
    assert tid == proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    batch, starts = encode_contexts(proc, ims[:2], QUESTIONS, answers=species[:2])
    hs = forward_hidden_states(model, batch)
    assert len(hs) == model.config.get_text_config().num_hidden_layers + 1
    h = hs[-1]
    ids = batch["input_ids"]
    grid = batch["image_grid_thw"]
    for i in range(2):
        where = [t for t in range(ids.shape[1]) if ids[i, t].item() == tid]
        assert len(where) == int(grid[i].prod()) // 4            # one token per 2x2 merged patch
        assert where == list(range(where[0], where[0] + len(where)))  # one contiguous run
        torch.testing.assert_close(pool_states(h, batch, "image_mean", tid)[i], h[i, where].mean(0))
        torch.testing.assert_close(pool_states(h, batch, "image_last", tid)[i], h[i, where[-1]])
        answer = proc.tokenizer(species[i], add_special_tokens=False)["input_ids"]
        assert ids[i, starts[i]:].tolist() == answer
        torch.testing.assert_close(pool_states(h, batch, "answer_first", answer_start=starts)[i], h[i, starts[i]])
    torch.testing.assert_close(pool_states(h, batch, "context_last"), h[:, -1])


def test_extract_features_shapes_batching_and_causality(tiny, images):
    model, proc = tiny
    ims, species = images
    D = model.config.get_text_config().hidden_size
    kinds = ("image_mean", "image_last", "context_last")
    a = extract_features(model, proc, ims, kinds=kinds, batch_size=3, progress=False)
    b = extract_features(model, proc, ims, kinds=kinds, batch_size=1, progress=False)
    for k in kinds:
        assert a[k].shape == (4, D) and a[k].dtype == np.float32
        np.testing.assert_allclose(a[k], b[k], atol=1e-4)
    # image tokens precede the question: their states cannot depend on it; the last token's must
    c = extract_features(model, proc, ims, prompts="Is the animal species Bus?", kinds=kinds, progress=False)
    np.testing.assert_allclose(c["image_mean"], a["image_mean"], atol=1e-4)
    assert not np.allclose(c["context_last"], a["context_last"], atol=1e-4)
    layers = extract_features(model, proc, ims, kinds="image_mean", layer=[0, -1], progress=False)["image_mean"]
    assert layers.shape == (4, 2, D)
    np.testing.assert_allclose(layers[:, 1], a["image_mean"], atol=1e-4)
    fa = extract_features(model, proc, ims, answers=species, kinds=("answer_first", "answer_mean"), progress=False)
    assert fa["answer_first"].shape == fa["answer_mean"].shape == (4, D)


def test_no_grad_and_mode_restored(images):
    model, proc = load_vlm("tiny-qwen2.5-vl", device="cpu")
    model.train()
    batch, _ = encode_contexts(proc, images[0][:2], QUESTIONS)
    hs = forward_hidden_states(model, batch)
    assert model.training and not any(h.requires_grad for h in hs)


def test_peft_wrapped_model_reads_the_same(images):
    base, proc = load_vlm("tiny-qwen2.5-vl", device="cpu")
    wrapped, _ = load_vlm("tiny-qwen2.5-vl", device="cpu", lora=True)
    assert image_token_id(wrapped) == image_token_id(base)
    kinds = ("image_mean", "context_last")
    fb = extract_features(base, proc, images[0], kinds=kinds, progress=False)
    fw = extract_features(wrapped, proc, images[0], kinds=kinds, progress=False)
    for k in kinds: np.testing.assert_allclose(fw[k], fb[k], atol=1e-5)  # LoRA's B starts at zero


def test_encode_matches_processor_batch(images):
    from hvr_nbs.data import user_prompt
    from hvr_nbs.evaluation import prompt_messages
    _, proc = load_vlm("tiny-qwen2.5-vl", device="cpu")
    ims = images[0][:2]
    batch, starts = encode_contexts(proc, ims, QUESTIONS)
    assert starts is None
    texts = [proc.apply_chat_template(prompt_messages(user_prompt(q), [im]), tokenize=False, add_generation_prompt=True)
             for q, im in zip(QUESTIONS, ims)]
    proc.tokenizer.padding_side = "left"
    ref = proc(text=texts, images=ims, padding=True, return_tensors="pt")
    for k in ref: assert torch.equal(batch[k], ref[k]), k
    with pytest.raises(ValueError, match="no positions"):
        pool_states(torch.zeros(2, batch["input_ids"].shape[1], 4), encode_contexts(proc, [None, None], ["a", "b"])[0],
                    "image_mean", image_token_id(None, proc))
    with pytest.raises(ValueError, match="Unknown pooling"):
        pool_states(torch.zeros(1, 1, 1), batch, "cls")
    assert set(POOLINGS) >= {"image_mean", "image_last", "context_last", "answer_first"}


def _toy(n_classes=4, per_class=30, dim=16, signal=5.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    X = rng.normal(size=(len(y), dim)).astype(np.float32)
    X[np.arange(len(y)), y] += signal
    return X, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_split(seed):
    labels = np.repeat(list("abcde"), [7, 9, 12, 8, 10])
    tr, te = balanced_split(labels, seed=seed)
    assert not set(tr) & set(te)
    assert set(pd.Series(labels[tr]).value_counts()) == {3} and set(pd.Series(labels[te]).value_counts()) == {4}
    tr, te = balanced_split(labels, n_train=2, n_test=3, max_classes=3, seed=seed)
    assert len(set(labels[tr])) == 3 and len(tr) == 6 and len(te) == 9
    with pytest.raises(ValueError, match="fewer than"):
        balanced_split(labels, n_train=5, n_test=5)


def test_probes_known_answers():
    X, y = _toy()
    Xn, _ = _toy(signal=0.0, seed=1)
    tr, te = balanced_split(y, seed=0)
    r = linear_probe(X, y, tr, te, epochs=60, lr=1e-2)
    assert r["best_acc"] >= 0.95 and len(r["curve"]) == 60 and r["chance"] == 0.25
    assert linear_probe(Xn, y, tr, te, epochs=60, lr=1e-2)["final_acc"] <= 0.45
    assert sklearn_probe(X, y, tr, te)["acc"] >= 0.95 and sklearn_probe(Xn, y, tr, te)["acc"] <= 0.45
    table, curves = probe_table({"signal": X, "noise": Xn}, {"fine": y, "coarse": y // 2}, epochs=40, lr=1e-2,
                                progress=False)
    t = table.set_index(["model", "rank"])
    assert t.loc[("signal", "fine"), "best_acc"] >= 0.95 and t.loc[("noise", "fine"), "sklearn_acc"] <= 0.45
    assert len(curves) == 4 * 40
    fig = plot_probe(table, curves)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    plt.close("all")


def _rows_and_features(world, signal):
    tax = world.taxonomy
    rng = np.random.default_rng(0)
    code = {g: rng.normal(size=32) for g in tax.nodes_at("genus")}
    rows = [s for s in tax.leaves for _ in range(5)]
    X = np.stack([signal * code[tax.name_at(s, "genus")] + rng.normal(size=32) for s in rows])
    return rows, X


def test_genus_similarity_and_ttest(world):
    tax = world.taxonomy
    rows, Xg = _rows_and_features(world, 2.0)
    _, Xn = _rows_and_features(world, 0.0)
    sg = genus_similarity(Xg, rows, tax)
    sn = genus_similarity(Xn, rows, genus=[tax.name_at(s, "genus") for s in rows])  # a rank column instead of a taxonomy
    assert list(sg["intra_partner"]) == list(sn["intra_partner"])
    assert (sg["delta"] > 0.3).all() and abs(sn["delta"].mean()) < 0.1
    for _, p in similarity_partners(rows, tax).iterrows():
        assert tax.name_at(p.intra_partner, "genus") == p.genus
        assert all(tax.name_at(o, "genus") != p.genus for o in p.inter_partners) and len(p.inter_partners) == 4
    tt = similarity_ttest(sn, sg, names=("noise", "genus"))
    ref = scipy.stats.ttest_rel(sn["delta"], sg["delta"])
    assert np.isclose(tt["t"][0], ref.statistic) and np.isclose(tt["p"][0], ref.pvalue) and tt["p"][0] < 1e-6
    assert isinstance(plot_similarity({"noise": sn, "genus": sg}), matplotlib.figure.Figure)
    plt.close("all")


def test_name_pairs_and_pca(world):
    tax = world.taxonomy
    rows = [s for s in tax.leaves for _ in range(3)]
    pairs = name_pairs(rows, tax, negatives="sibling", seed=1)
    assert len(pairs) == 2 * len(rows) and pairs["label"].mean() == 0.5
    neg = pairs[pairs.label == 0]
    assert all(n != s and tax.name_at(n, "genus") == tax.name_at(s, "genus") for n, s in zip(neg.name, neg.species))
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    X = rng.normal(size=(200, 20)); X[:, 0] += 6 * y
    assert pca_separability(X, y)["separability"] >= 0.95
    assert pca_separability(rng.normal(size=(200, 20)), y)["separability"] <= 0.65
    twins = np.repeat(rng.normal(size=(100, 20)) * 3, 2, axis=0) + rng.normal(size=(200, 20)) * 0.3
    yt, g = np.tile([1, 0], 100), np.repeat(np.arange(100), 2)
    assert abs(pca_separability(twins, yt, groups=g, n_components=20)["separability"] - 0.5) < 0.1
    fig = plot_pca({"a": pca_separability(X, y), "b": pca_separability(twins, yt, groups=g)})
    assert len(fig.axes) == 2
    plt.close("all")
