"Fast checks of hvr_nbs.models and the pure parts of hvr_nbs.training (no SynthTaxa rendering, no training runs)."
import os
import numpy as np
import pytest
import torch
from PIL import Image

from hvr_nbs.models import (train_tokenizer, vlm_corpus, make_tiny_vlm, load_vlm, cached_artifact, config_hash,
                            parse_tiny_name, count_parameters, TinyClip, TinyClipEncoder)
from hvr_nbs.training import dapo_keep_mask, merge_rollouts


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny_dir(request, tmp_path_factory):
    return make_tiny_vlm(tmp_path_factory.mktemp(request.param), arch=request.param, size="xs", vocab_size=512)


def _inputs(processor, image, answer=None):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the genus?"}]}]
    if answer is not None: msgs.append({"role": "assistant", "content": answer})
    text = processor.apply_chat_template(msgs, add_generation_prompt=answer is None)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_tokenizer_roundtrip_and_specials():
    tok = train_tokenizer(vlm_corpus(extra=["Aus bus"]), vocab_size=400)
    s = "<|im_start|>user\nIs it Aus bus? Ünïcode<|im_end|>"
    assert tok.decode(tok(s)["input_ids"]) == s
    assert tok.convert_ids_to_tokens(tok("<|image_pad|>")["input_ids"]) == ["<|image_pad|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_tiny_save_reload_generate(tiny_dir, image):
    model, proc = load_vlm(tiny_dir, device="cpu")
    assert count_parameters(model)["total"] < 400_000
    inp = _inputs(proc, image)
    out = model.generate(**inp, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= inp["input_ids"].shape[1] + 5
    assert isinstance(proc.batch_decode(out[:, inp["input_ids"].shape[1]:])[0], str)
    from transformers import AutoModelForImageTextToText
    again = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    with torch.no_grad(): torch.testing.assert_close(model(**inp).logits, again(**inp).logits)


def test_lora_trains_adapters_only(tiny_dir, image):
    model, proc = load_vlm(tiny_dir, device="cpu", lora=dict(r=4, alpha=8, dropout=0.0))
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and not any("visual" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = _inputs(proc, image, answer="Aus")
    model(**batch, labels=batch["input_ids"]).loss.backward(); opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n for n in changed)


def test_freeze_vision(tiny_dir):
    model, _ = load_vlm(tiny_dir, device="cpu", freeze_vision=True)
    c = count_parameters(model)
    assert c["trainable"] == c["language"] and c["vision"] > 0


def test_offline_missing_checkpoint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="Qwen/Qwen2.5-VL-7B-Instruct"):
        load_vlm("Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(FileNotFoundError, match="No checkpoint folder"):
        load_vlm("/no/such/dir")


def test_parse_tiny_name():
    assert parse_tiny_name("tiny-qwen2.5-vl-m") == ("qwen2_5_vl", "m")
    assert parse_tiny_name("Qwen/Qwen3-VL-2B-Instruct") is None


def test_cached_artifact(tmp_path):
    calls = []
    def build(d): calls.append(d); (d/"f").write_text("x")
    a, hit1 = cached_artifact("k", {"a": 1}, build, root=tmp_path)
    b, hit2 = cached_artifact("k", {"a": 1}, build, root=tmp_path)
    assert (a, hit1, hit2, len(calls)) == (b, False, True, 1)
    assert a.name == config_hash({"a": 1}) and (a/"DONE").exists()


def test_tinyclip_shapes_and_reload(tmp_path, image):
    enc = TinyClipEncoder(TinyClip(width=32, depth=1, embed_dim=16))
    assert enc.encode_images([image]).shape == (1, 16)
    assert enc.encode_image_tokens([image]).shape == (1, 64, 32)
    torch.testing.assert_close(enc.encode_texts(["a", "b c"]).norm(dim=-1), torch.ones(2))
    enc.model.save(tmp_path/"tc")
    torch.testing.assert_close(TinyClipEncoder(TinyClip.load(tmp_path/"tc")).encode_texts(["Aus"]), enc.encode_texts(["Aus"]))


def test_dapo_keep_mask():
    assert dapo_keep_mask([0, 0, 0, 0, 1, 1, 0, 0], 4).tolist() == [False, True]  # all wrong: dropped; mean 0.5: kept
    assert dapo_keep_mask([0, 1, 1, 1], 2, bounds=(0.01, 0.99)).tolist() == [True, False]


def test_merge_rollouts_repads():
    b0 = dict(prompt_ids=torch.tensor([[5]]), prompt_mask=torch.tensor([[1]]), completion_ids=torch.tensor([[1, 2, 3]]),
              completion_mask=torch.tensor([[1, 1, 1]]), advantages=torch.tensor([1.0]), num_items_in_batch=torch.tensor(3))
    b1 = dict(prompt_ids=torch.tensor([[6, 7]]), prompt_mask=torch.tensor([[1, 1]]), completion_ids=torch.tensor([[4]]),
              completion_mask=torch.tensor([[1]]), advantages=torch.tensor([2.0]), num_items_in_batch=torch.tensor(1))
    m = merge_rollouts([b0, b1], [(0, 0), (1, 0)], pad_token_id=0)
    assert m["prompt_ids"].tolist() == [[0, 5], [6, 7]] and m["prompt_mask"].tolist() == [[0, 1], [1, 1]]
    assert m["completion_ids"].tolist() == [[1, 2, 3], [4, 0, 0]] and m["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]

