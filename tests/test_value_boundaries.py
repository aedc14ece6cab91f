"""Value tests at the boundaries (issue 17, 'Tests that would notice a wrong method'): exact expected values where a
plausible slip in a reward, metric, pair builder, the DAPO filter or the runner changes a number but no range or type.

Each survivor of the issue's hand-made mutations has its own test here: spare pairs go to the LARGEST remainders
(`verification_pairs`, n = 10 at 1:2 gives 3/7); the detection IoU threshold sits at 0.5 (an IoU in (0.4, 0.5) is a
miss, exactly 0.5 is a miss for the Visual-RFT reward and a hit for AP50); `dapo_keep_mask` drops a group whose mean
accuracy lies on a bound; `hvr-reproduce --resume --force` runs completed notebooks again. Also the unbounded TaxonRL
correctness never goes below its declared minimum ln(1e-15).

The fast part of the suite: `.ci/mutation` runs mutmut against this file alone (see tests/README.md).
"""
import json, math, sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hvr_nbs import rewards as R
from hvr_nbs import metrics as M
from hvr_nbs.rewards import BCE_EPS, bce_correctness


def box_pair(iou):
    "Two boxes [0, 0, 100, 1] and [0, 0, 100 * iou, 1]: their IoU is `iou` (exact for the values used here)."
    return [0.0, 0.0, 100.0, 1.0], [0.0, 0.0, 100.0 * iou, 1.0]


def det(*items):
    "A Visual-RFT detection completion holding `items` ({'Position', 'Confidence'} dicts)."
    return "<think>boxes</think><answer>" + json.dumps(list(items)) + "</answer>"


# ---------------------------------------------------------------- (a) strata: largest remainder, spare pairs to the largest
def test_largest_remainder_gives_spares_to_largest_remainders():
    lr = __import__("hvr_nbs.data", fromlist=["_largest_remainder"])._largest_remainder
    assert lr({"a": 1, "b": 2}, 10) == {"a": 3, "b": 7}          # 3.33 / 6.67: the spare goes to b (.67), not a (.33)
    assert lr({"b": 2, "a": 1}, 10) == {"b": 7, "a": 3}          # key order does not matter
    assert lr({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}   # ties: the first key
    assert lr({"a": 1, "b": 1, "c": 1}, 11) == {"a": 4, "b": 4, "c": 3}
    assert lr({"a": 2, "b": 1, "c": 1}, 3) == {"a": 1, "b": 1, "c": 1}    # 1.5 / .75 / .75: two spares, to b and c
    assert lr({"a": 0.2, "b": 0.8}, 7) == {"a": 1, "b": 6}      # 1.4 / 5.6
    assert lr({"a": 1, "b": 3}, 8) == {"a": 2, "b": 6}          # exact: no spare
    assert lr({"x": 5}, 4) == {"x": 4}
    assert sum(lr({"a": 1, "b": 2, "c": 4, "d": 8}, 37).values()) == 37
    many = {f"s{i:02d}": 1 if i % 3 else 2 for i in range(17)}          # 17 strata: numpy's default sort is not stable
    got, share = lr(many, 19), {k: v / 23 * 19 for k, v in many.items()}
    spare = [k for k in many if got[k] > math.floor(share[k])]
    assert sum(got.values()) == 19 and all(got[k] - math.floor(share[k]) in (0, 1) for k in many)
    for r in {round(share[k] % 1, 12) for k in many}:                  # among equal remainders the spares go to the first keys
        tied = [k for k in many if round(share[k] % 1, 12) == r]
        assert [k in spare for k in tied] == sorted((k in spare for k in tied), reverse=True), r


@pytest.fixture(scope="module")
def tiny_birds(tmp_path_factory):
    "12 images of 4 species in 2 genera (3 each), plain PNG files; and their taxonomy (genus, species)."
    from PIL import Image
    from datasets import Dataset, Image as ImageFeature
    from hvr_nbs.taxonomy import Taxonomy
    d = tmp_path_factory.mktemp("birds")
    species = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    colours = {"a1": (250, 0, 0), "a2": (240, 10, 0), "b1": (0, 0, 250), "b2": (0, 10, 240)}
    rows = []
    for s, (r, g, b) in colours.items():
        for k in range(3):
            p = d/f"{s}_{k}.png"; Image.new("RGB", (8, 8), (r, g + 3 * k, b)).save(p)
            rows.append({"image": str(p), "species": s, "image_id": f"{s}_{k}"})
    ds = Dataset.from_list(rows).cast_column("image", ImageFeature())
    return ds, Taxonomy(species, ["genus", "species"])


def _strata_of(pairs): return dict(Counter(pairs["stratum"]))


def test_verification_pairs_n10_at_1_to_2_gives_3_and_7(tiny_birds):
    from hvr_nbs.data import verification_pairs
    ds, tax = tiny_birds
    assert _strata_of(verification_pairs(ds, tax, n_pairs=10, proportions={"same_species": 1, "different": 2})) == \
        {"same_species": 3, "different": 7}
    assert _strata_of(verification_pairs(ds, tax, n_pairs=10, proportions={"same_species": 2, "different": 1})) == \
        {"same_species": 7, "different": 3}


# ---------------------------------------------------------------- (b) the detection IoU threshold 0.5
@pytest.mark.parametrize("iou", [0.41, 0.45, 0.49])
def test_iou_between_04_and_05_is_a_miss(iou):
    gt, pred = box_pair(iou)
    assert R.box_iou(gt, pred) == pytest.approx(iou)
    assert R.match_detections([{"box": tuple(pred), "confidence": 0.9}], [gt]) == []
    assert R.visual_rft_iou_reward([det({"Position": pred, "Confidence": 0.9})], boxes=[[gt]]) == [0.0]
    assert R.visual_rft_confidence_reward([det({"Position": pred, "Confidence": 0.9})], boxes=[[gt]]) == [pytest.approx(0.1)]


def test_iou_exactly_05_is_a_miss_for_the_reward_above_is_a_hit():
    "The reward matches at IoU strictly above 0.5 (Visual-RFT's released `iou > 0.5`): exactly 0.5 is a miss."
    gt, pred = box_pair(0.5)
    assert R.box_iou(gt, pred) == 0.5
    assert R.visual_rft_iou_reward([det({"Position": pred, "Confidence": 0.9})], boxes=[[gt]]) == [0.0]
    gt, pred = box_pair(0.51)
    assert R.visual_rft_iou_reward([det({"Position": pred, "Confidence": 0.9})], boxes=[[gt]]) == [pytest.approx(0.51)]
    assert R.visual_rft_confidence_reward([det({"Position": pred, "Confidence": 0.9})], boxes=[[gt]]) == [pytest.approx(0.9)]
    assert R.match_detections([{"box": tuple(pred), "confidence": 0.9}], [gt]) == [(0, 0, pytest.approx(0.51))]


def test_ap50_counts_iou_at_or_above_05_as_a_hit():
    "AP50 (COCO): a true positive at IoU >= 0.5, so exactly 0.5 is a hit and 0.45 a miss."
    from hvr_nbs.visual_rft import average_precision
    for iou, ap in ((0.45, 0.0), (0.5, 1.0), (0.55, 1.0)):
        gt, pred = box_pair(iou)
        assert average_precision([[(pred, 0.9)]], [[gt]]) == ap, iou
    gt, pred = box_pair(0.45)
    assert average_precision([[(pred, 0.9)]], [[gt]], iou_thr=0.4) == 1.0


# ---------------------------------------------------------------- (c) DAPO's dynamic-sampling filter
def test_dapo_keep_mask_drops_groups_on_a_bound():
    "Kept: a group mean strictly inside (0.01, 0.99). Means exactly 0.01 or 0.99 (float32) are dropped, as are 0 and 1."
    from hvr_nbs.training import dapo_keep_mask
    acc = [0.01, 0.01, 0.99, 0.99, 0, 0, 1, 1, 0, 1, 0.02, 0.02, 0.98, 0.98, float("nan"), float("nan"), float("nan"), 0.5]
    assert dapo_keep_mask(acc, 2).tolist() == [False, False, False, False, True, True, True, False, True]
    assert dapo_keep_mask([0, 0, 0, 1], 4).tolist() == [True]             # 1 of 4 right: informative
    assert dapo_keep_mask([0, 0, 0, 0, 1, 1, 1, 1], 4).tolist() == [False, False]
    assert dapo_keep_mask([0.25] * 4, 4, bounds=(0.25, 0.5)).tolist() == [False]   # the bounds are open
    assert dapo_keep_mask([0.5] * 4, 4, bounds=(0.25, 0.5)).tolist() == [False]
    assert dapo_keep_mask([0.375] * 4, 4, bounds=(0.25, 0.5)).tolist() == [True]
    assert dapo_keep_mask([0, 0], 1).tolist() == [False, False]
    with pytest.raises(RuntimeError): dapo_keep_mask([0, 1, 1], 2)   # not whole groups


# ---------------------------------------------------------------- (d) --resume --force
def test_should_run_truth_table():
    from hvr_nbs.reproduce import _should_run
    recs = [None, {}, {"status": "ok"}, {"status": "failed"}, {"status": "interrupted"}, {"status": "running"}]
    assert [_should_run(r, resume=True, force=False) for r in recs] == [True, True, False, True, True, True]
    assert [_should_run(r, resume=True, force=True) for r in recs] == [True] * 6
    assert [_should_run(r, resume=False, force=False) for r in recs] == [True] * 6
    assert [_should_run(r, resume=False, force=True) for r in recs] == [True] * 6


def test_resume_skips_and_resume_force_reruns_completed_notebooks(tmp_path, capsys):
    "Through `hvr_nbs.reproduce.main`: --resume runs no completed notebook, --resume --force runs every one again."
    import nbformat
    from hvr_nbs.reproduce import main
    nbs, out, log = tmp_path/"nbs", tmp_path/"run", tmp_path/"ran.txt"
    nbs.mkdir()
    for stem in ("01_a", "02_b"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        p = nbformat.v4.new_code_cell("profile = 'smoke'"); p.metadata["tags"] = ["parameters"]
        nb.cells = [p, nbformat.v4.new_code_cell(f"open({str(log)!r}, 'a').write('{stem}\\n')")]
        nbformat.write(nb, str(nbs/f"{stem}.ipynb"))
    ran = lambda: log.read_text().split()  # in run order: --jobs 1, since 01 and 02 are foundation notebooks (two at a time by default)
    assert main(["--nbs", str(nbs), "--out", str(out), "--jobs", "1"]) == 0
    assert ran() == ["01_a", "02_b"]
    first = json.loads((out/"status.json").read_text())
    assert main(["--nbs", str(nbs), "--out", str(out), "--jobs", "1", "--resume"]) == 0
    assert ran() == ["01_a", "02_b"]                                     # nothing ran again
    assert json.loads((out/"status.json").read_text()) == first
    assert main(["--nbs", str(nbs), "--out", str(out), "--jobs", "1", "--resume", "--force"]) == 0
    assert ran() == ["01_a", "02_b", "01_a", "02_b"]                     # both ran again
    assert all(v["status"] == "ok" for v in json.loads((out/"status.json").read_text()).values())


# ---------------------------------------------------------------- the unbounded correctness never goes below ln(1e-15)
def test_bce_correctness_unbounded_minimum_is_exact():
    lo = math.log(BCE_EPS)
    assert bce_correctness(1.0, 0, bounded=False) == lo       # 1 - (1 - 1e-15) < 1e-15 in floats: clipped, not below
    assert bce_correctness(0.0, 1, bounded=False) == lo
    assert bce_correctness(None, 0, bounded=False) == lo
    assert bce_correctness(1.5, 1, bounded=False) == lo
    assert bce_correctness(float("nan"), 0, bounded=False) == lo
    for p in [1.0, 1 - 1e-16, 1 - 1e-15, 1 - 2e-15, 1 - 1e-14, *np.linspace(1 - 1e-13, 1, 50)]:
        assert bce_correctness(float(p), 0, bounded=False) >= lo, p
    for p in [0.0, 1e-16, 1e-15, 2e-15, 5e-324, *np.linspace(0, 1e-13, 50)]:
        assert bce_correctness(float(p), 1, bounded=False) >= lo, p
    assert bce_correctness(1.0, 1, bounded=False) == pytest.approx(0.0, abs=1e-14)
    assert bce_correctness(0.0, 0, bounded=False) == pytest.approx(0.0, abs=1e-14)
    f = R.make_taxonrl_reward(bounded=False, weights=(0, 1, 0))
    assert f.reward_range[0] == lo
    assert f(["<think>x</think><answer>1.0000</answer>"], label=[0]) == [lo]


# ================================================================ rewards: exact values, branch by branch
# (the fast selection `.ci/mutation` runs: each test pins values a one-token slip in hvr_nbs.rewards would change)
def test_completion_text_shapes():
    ct = R.completion_text
    assert ct(None) == "" and ct("abc") == "abc" and ct(5) == "" and ct(("a", "b")) == "ab"
    assert ct({"role": "assistant", "content": "x"}) == "x" and ct({"content": "x"}) == "x"
    assert ct({"role": "user", "content": "x"}) == ""
    assert ct(["a", {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, 7, {"role": "assistant"}]) == "ab"
    parts = [{"type": "text", "text": "a"}, {"text": "b"}, {"type": "image", "text": "c"}, {"type": "text", "text": 3}, "d"]
    assert ct([{"role": "assistant", "content": parts}]) == "ab"
    assert ct([{"role": "assistant", "content": ({"type": "text", "text": "a"},)}]) == "a"
    assert ct([{"role": "assistant", "content": 5}]) == ""
    assert ct([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert ct([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]) == "ab"
    assert R._texts("ab") == ["ab"] and R._texts({"content": "ab"}) == ["ab"] and R._texts(["a", "b"]) == ["a", "b"]
    assert R._texts(5) == [""] and R._texts(None) == [""]


def test_column_broadcast_aliases_and_errors():
    col = R._column
    for v in ("x", b"x", 1, 1.5, True, {"k": 1}):
        assert col({"a": v}, 2, "a") == [v, v]
    assert col({"a": [1, 2]}, 2, "a") == [1, 2] and col({"a": (1, 2)}, 2, "a") == [1, 2]
    assert col({"a": None, "b": [3, 4]}, 2, "a", "b") == [3, 4]
    assert col({"a": [9, 9], "b": [3, 4]}, 2, "a", "b") == [9, 9]
    with pytest.raises(ValueError, match=r"^dataset column 'a' has 3 values for 2 completions$"): col({"a": [1, 2, 3]}, 2, "a")
    assert col({}, 2, "a", required=False) is None
    with pytest.raises(KeyError) as e: col({"prompts": 1, "zz": 2, "completion_ids": 3}, 2, "a", "b")
    assert str(e.value) == "\"this reward needs the dataset column 'a' or 'b'; got columns ['zz']\""


def test_tags_and_probabilities():
    assert R.normalize_tags(" < answer > 0.5 </ answer > ") == "<answer>0.5</answer>"
    assert R.normalize_tags([{"role": "assistant", "content": "a < b"}]) == "a<b"
    pt = R.parse_tag
    assert pt("ab<answer> cd </answer>ef", "answer") == "cd" and pt("<answer></answer>", "answer") == ""
    assert pt("< answer >x</ answer >", "answer") == "x" and pt("<p>q</p>", "p") == "q"
    for bad in ("<answer>x", "x</answer>", "<answer>a</answer><answer>b</answer>", "</answer>x<answer>", "<think>t</think>"):
        assert pt(bad, "answer") is None, bad
    pp = R.parse_probability
    assert pp("<answer>0.5000</answer>") == 0.5 and pp("<answer>0.50</answer>") is None
    assert pp("<answer>0.50</answer>", strict_number=False) == 0.5
    assert pp("<answer>1.0000</answer>") == 1.0 and pp("<answer>0.0000</answer>") == 0.0
    assert pp("<answer>1.0001</answer>") is None and pp("<answer>-0.0000</answer>") is None
    z = pp("<answer>-0.0</answer>", strict_number=False)
    assert z == 0.0 and math.copysign(1, z) == 1.0                    # -0.0 comes back as 0.0
    assert pp("0.2500", tag=None) == 0.25 and pp(" 0.2500 ", tag=None) == 0.25 and pp("<answer>0.2500</answer>", tag=None) is None
    assert pp("<p>0.2500</p>", tag="p") == 0.25
    for s, want in (("1e-1", 0.1), ("1.5", None), ("0", 0.0), ("1", 1.0), ("abc", None), ("-0.5", None), (".5", 0.5)):
        assert pp(f"<answer>{s}</answer>", strict_number=False) == want, s
    ptp = R.parse_taxon_pair
    assert ptp("a; b") == ("a", "b") and ptp(" a ;b ") == ("a", "b")
    for bad in ("a;", ";b", "a;b;c", "ab", None, 5): assert ptp(bad) is None, bad
    tp = R.parse_taxon_pairs
    assert tp("<order>A; B</order><genus>x</genus>") == {"order": ("A", "B"), "genus": None}
    assert tp("</family>") == {"family": None} and tp("<family>") == {"family": None} and tp("x") == {}
    assert tp("< order >A;B</ order >") == {"order": ("A", "B")}
    assert tp("<kingdom>A;B</kingdom><order>C;D</order>", levels=("kingdom",)) == {"kingdom": ("A", "B")}


@pytest.mark.parametrize("s,want", [
    ("B", "B"), ("b", "B"), ("(c)", "C"), ("D.", "D"), ("The answer is C", "C"), ("Answer: (A)", "A"), ("answer", None),
    ("(B) Laysan", "B"), ("C. Laysan Albatross", "C"), ("A) x", "A"), ("A: x", "A"), ("A. B", None), ("A. (C)", None),
    ("A. C. x", None), ("E", None), ("", None), ("\uff22", "B"), ("AB", None), ("correct option - d", "D")])
def test_parse_option_letter(s, want):
    assert R.parse_option_letter(s) == want


def test_json_repair():
    ct = R._close_truncated
    assert ct('[1, 2, 3]') == '[1, 2, 3]' and ct('[1, 2]xyz') == '[1, 2]'
    assert ct('[{"a": 1}, {"b": 2') == '[{"a": 1}]' and ct('[{"a": 1') == '[]' and ct('[[1], [2') == '[[1]]'
    assert ct('[{"a": "x]}\\"y"}, {"b"') == '[{"a": "x]}\\"y"}]'              # brackets and \" inside a string
    assert ct('[{"a": "x\\\\"}, {"b') == '[{"a": "x\\\\"}]'                     # an escaped backslash ends before the quote
    assert ct('[{"a": 1}, X}') == '[{"a": 1}, X}' and ct('[1, X') == '[]'
    assert ct('{"a": [1]} tail') == '{"a": [1]}' and ct('[{"": 1}, {"b') == '[{"": 1}]'
    assert R._loads_prefix('[1] tail') == [1] and R._loads_prefix('x') is None and R._loads_prefix('[' * 100_000) is None
    pj = R.parse_json_list
    assert pj('[1, 2]') == [1, 2] and pj('```json\n[1, 2]\n```') == [1, 2] and pj('noise [1] more') == [1]
    assert pj('{"a": 1}, {"b": 2}') == [{"a": 1}, {"b": 2}] and pj('{"a": [1]}') == [{"a": [1]}]
    assert pj("[{'a': 1}]") == [{"a": 1}] and pj("[1, 'a']") == [1, "a"] and pj('[{"a": 1}, {"b"') == [{"a": 1}]
    assert pj('[1] {"a": 1}') == [1] and pj('no json') is None and pj('"x"') is None and pj('{') == []
    assert pj([{"role": "assistant", "content": "[3]"}]) == [3] and pj('[1, "it\'s"]') == [1, "it's"]
    assert pj('[[1], [2]]') == [[1], [2]]


def test_boxes_and_detections():
    assert R._num(True) is None and R._num(1) == 1.0 and type(R._num(1)) is float and R._num(float("inf")) is None
    assert R._num("1") is None and R._num(float("nan")) is None and R._num(-2.5) == -2.5
    assert R._box([0, 0, 1, 1]) == (0.0, 0.0, 1.0, 1.0) and R._box((0, 0, 1, 2)) == (0.0, 0.0, 1.0, 2.0)
    assert R._box([5, 0, 10, 3]) == (5.0, 0.0, 10.0, 3.0)
    for bad in ([0, 0, 1], [0, 0, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, "a"], "abcd", [2, 0, 1, 1], [0, 2, 1, 1]):
        assert R._box(bad) is None, bad
    pd_ = R.parse_detections
    assert pd_('<answer>[{"Position": [0,0,10,10], "Confidence": 0.9}]</answer>') == [{"box": (0., 0., 10., 10.), "confidence": 0.9}]
    assert pd_('[{"position": [0,0,10,10], "CONFIDENCE": 1.5}]') == [{"box": (0., 0., 10., 10.), "confidence": None}]
    items = [{"Position": [0, 0, 10, 10], "Confidence": 0.9}, {"Position": [0, 0, 10, 10], "Confidence": 0.1},
             {"Position": [1, 2], "Confidence": 0.3}, {"Position": [1, 2], "Confidence": 0.4}, 5, 5, {"Confidence": 0.2},
             {"Position": [0, 0, 5, 5], "Confidence": 0.0}, {"Position": [0, 0, 6, 6], "Confidence": 1.0},
             {"Position": [0, 0, 7, 7], "Confidence": -0.1}, {"Position": [0, 0, 8, 8], "Confidence": True}]
    assert pd_(det(*items)) == [{"box": (0., 0., 10., 10.), "confidence": 0.9}, {"box": None, "confidence": 0.3},
                                {"box": None, "confidence": None}, {"box": None, "confidence": 0.2},
                                {"box": (0., 0., 5., 5.), "confidence": 0.0}, {"box": (0., 0., 6., 6.), "confidence": 1.0},
                                {"box": (0., 0., 7., 7.), "confidence": None}, {"box": (0., 0., 8., 8.), "confidence": None}]
    assert pd_('no list') is None and pd_('<answer>nothing</answer>[{"Position": [0, 0, 1, 1]}]') is None
    assert pd_(det({"Position": [0, 0, 10, 10], "Confidence": 0.9}, {"Position": [0.0, 0.0, 10.0, 10.0], "Confidence": 0.5})) == \
        [{"box": (0., 0., 10., 10.), "confidence": 0.9}]                   # the same box written as int or float
    long = lambda tail: json.dumps([{"Position": "x" * 198 + tail[0]}, {"Position": "x" * 198 + tail[1]}])
    assert len(pd_(long("ab"))) == 2                                     # reprs differ at character 200: two items
    assert len(pd_(json.dumps([{"Position": "x" * 199 + "a"}, {"Position": "x" * 199 + "b"}]))) == 1   # only after: one
    assert len(pd_(json.dumps(["y" * 198 + "a", "y" * 198 + "b"]))) == 2
    assert len(pd_(json.dumps(["y" * 199 + "a", "y" * 199 + "b"]))) == 1


def test_ground_truth_rows():
    nn = R._name_or_none
    assert nn(None) is None and nn(float("nan")) is None and nn("  Merops   apiaster ") == "Merops apiaster" and nn(5) == "5"
    for m in ("", "none", "NaN", "null", "Unknown", "-", "N/A"): assert nn(m) is None, m
    for v, want in ((True, 1), (False, 0), (1, 1), (0.0, 0), (np.int64(1), 1), ("1", 1), ("0", 0), ("1.0", 1), ("0.0", 0),
                    ("true", 1), ("False", 0), (" Same ", 1), ("different", 0)):
        assert R._label01(v) == want and type(R._label01(v)) is int, v
    for bad in (2, "maybe", None, 0.5):
        with pytest.raises(ValueError, match="label must be 0/1"): R._label01(bad)
    g = R.parse_taxonrl_ground_truth
    assert g("1; 0; Merops, Meropidae, Coraciiformes; Alcedo, Alcedinidae, Coraciiformes") == dict(
        label=1, distance="0", genus1="Merops", family1="Meropidae", order1="Coraciiformes", genus2="Alcedo",
        family2="Alcedinidae", order2="Coraciiformes")
    assert g("0;2;a;b;c;d;e;f") == dict(label=0, distance="2", genus1="a", family1="b", order1="c", genus2="d", family2="e", order2="f")
    assert g("0; 3; , unknown, P; x, y, z")["genus1"] is None and g("0; 3; , unknown, P; x, y, z")["family1"] is None
    with pytest.raises(ValueError, match="must be a string, got int"): g(5)
    with pytest.raises(ValueError, match="each image needs 'genus, family, order'"): g("1; 0; a, b; c, d, e")
    with pytest.raises(ValueError, match="each image needs"): g("1; 0; a, b, c; d, e")
    with pytest.raises(ValueError, match=r"\(8 fields\), got 3"): g("1;2;3")
    t = R.taxonrl_truth
    row = {"label": 1, "order1": "A", "order2": "A", "family1": "F", "family2": "G", "genus1": "x", "genus2": None}
    assert t(row) == {"label": 1, "order": ("A", "A"), "family": ("F", "G"), "genus": ("x", None)}
    assert t({"order1": "A"}) == {"label": None, "order": ("A", None), "family": (None, None), "genus": (None, None)}
    assert t({"label": "same", "taxa": {"order": ["A", "B"], "family": None}}) == \
        {"label": 1, "order": ("A", "B"), "family": (None, None), "genus": (None, None)}
    with pytest.raises(ValueError, match="column 'taxa' must map"): t({"taxa": [1, 2]})
    for bad in ("AB", ["A"], ["A", "B", "C"]):
        with pytest.raises(ValueError, match=r"taxa\['order'\] must be \[name1, name2\]"): t({"taxa": {"order": bad}})
    assert t({"ground_truth": "1; 0; g, f, o; g2, f2, o2"}) == {"label": 1, "order": ("o", "o2"), "family": ("f", "f2"), "genus": ("g", "g2")}
    assert t({"label": 0, "ground_truth": "1; 0; g, f, o; g, f, o"})["label"] == 0
    assert t({"taxa": None, "ground_truth": "0;1;a;b;c;d;e;f"})["order"] == ("c", "f")
    assert t({"label": 1}, require_taxa=False) == {"label": 1, "order": (None, None), "family": (None, None), "genus": (None, None)}
    with pytest.raises(KeyError) as e: t({"label": 1, "prompts": 1, "x": 2})
    assert e.value.args[0] == "TaxonRL ground truth needs columns order1..genus2, or 'taxa', or 'ground_truth'; got ['label', 'x']"
    assert t({"kingdom1": "K", "kingdom2": "L", "order1": "O"}, levels=("kingdom",)) == {"label": None, "kingdom": ("K", "L")}
    assert R._rows({"label": [1, 0], "order1": "A", "prompts": ["p", "p"]}, 2) == [{"label": 1, "order1": "A"}, {"label": 0, "order1": "A"}]
    with pytest.raises(KeyError) as e: R._rows({"answer": [1]}, 1)
    assert e.value.args[0] == "TaxonRL rewards need columns 'label' and order1..genus2 (or 'taxa' / 'ground_truth')"
    assert R._label_of({"label": 1}) == 1 and R._label_of({"ground_truth": "1;0;a;b;c;d;e;f"}) == 1
    with pytest.raises(KeyError) as e: R._label_of({"order1": "A"})
    assert e.value.args[0] == "TaxonRL correctness needs a 'label' column (1 same species, 0 different) or 'ground_truth'"


def test_taxonrl_format_and_correctness():
    ok = R.taxonrl_format_ok
    assert ok("<think>x</think><answer>0.5000</answer>") and ok(" < think >x</think>\n<answer>0.5000</answer> ")
    for bad in ("<think>x</think><answer>0.500</answer>", "<think>x</think><answer>0.5000</answer><answer>",
                "<think><think>x</think><answer>0.5000</answer>", "x<think>x</think><answer>0.5000</answer>"):
        assert not ok(bad), bad
    assert R.taxonrl_format_reward(["<think>x</think><answer>0.5000</answer>", "0.5000"]) == [1.0, 0.0]
    b = bce_correctness
    assert b(0.9, 1) == pytest.approx(1 + math.log(0.9)) and b(0.1, 0) == pytest.approx(1 + math.log(0.9))
    assert b(0.5, 1, bounded=False) == pytest.approx(math.log(0.5)) and b(0.2, 0, bounded=False) == pytest.approx(math.log(0.8))
    assert b(1 / math.e - 1e-9, 1) == 0.0 and b(1 / math.e + 1e-3, 1) > 0 and b(0.3, 1) == 0.0
    assert b(0.3, 1, bounded=False) == pytest.approx(math.log(0.3))
    for bad in (None, -0.1, 1.1, "0.5", float("nan")): assert b(bad, 1) == 0.0, bad
    assert b(1, 1) == 1 - (-math.log(1 - BCE_EPS)) and b(0.0, 0) == pytest.approx(1.0) and b(0.0, 1) == 0.0
    assert b(1.0, 1, bounded=False) == math.log(1 - BCE_EPS) and b(0.0, 0, bounded=False) == math.log(1 - BCE_EPS)
    f = R.taxonrl_correctness_reward
    out = ["<think>x</think><answer>0.9000</answer>", "<think>x</think><answer>0.90</answer>"]
    assert f(out, label=[1, 1]) == [pytest.approx(1 + math.log(0.9)), 0.0]
    assert f(out, label=[1, 1], strict_number=False) == [pytest.approx(1 + math.log(0.9))] * 2
    assert f(out, label=[0, 0], bounded=False) == [pytest.approx(math.log(0.1)), math.log(BCE_EPS)]
    assert R.taxonrl_correctness_released(out, label=[1, 1]) == [pytest.approx(1 + math.log(0.9))] * 2
    assert f(out[:1], ground_truth=["0; 1; a, b, c; d, e, f"]) == [0.0]


TRUTH = {"order": ("O", "O"), "family": ("F", "G"), "genus": ("g1", "g2")}


def test_taxonomy_scores():
    ts = R.taxonomy_score
    assert R._same_name("A  b", "a B") and not R._same_name("a", "b") and not R._same_name(None, "a") and not R._same_name("a", None)
    assert ts({"order": ("O", "O"), "family": ("F", "G")}, TRUTH) == 1.0
    assert ts({"order": (" o", "O"), "family": ("f", "g")}, TRUTH) == 1.0
    assert ts({"order": ("O", "O"), "family": ("F", "G"), "genus": ("g1", "g2")}, TRUTH) == pytest.approx(2 / 3)
    assert ts({"order": ("O", "O")}, TRUTH) == pytest.approx(2 / 3) and ts({}, TRUTH) == pytest.approx(1 / 3)
    assert ts({"order": ("O", "O"), "family": ("F", "F")}, TRUTH) == pytest.approx(2 / 3)
    assert ts({"order": ("O", "O"), "family": ("F", "F")}, TRUTH, stop_needs_split=True) == pytest.approx(1 / 3)
    assert ts({"order": ("O", "O"), "family": ("F", "X")}, TRUTH, stop_needs_split=True) == pytest.approx(2 / 3)
    assert ts({"order": ("O", "O")}, TRUTH, stop_needs_split=True) == pytest.approx(1 / 3)
    assert ts({"order": ("O", "O")}, {"order": ("O", "O"), "family": (None, "G"), "genus": ("g", "g")}) == pytest.approx(1 / 2)
    assert ts({}, {"order": (None, None)}) is None and ts({"genus": ("g", "g")}, {"genus": ("g", "g")}) == 1.0
    assert ts({"order": None}, {"order": ("O", "P")}, levels=("order", "family")) == 0.5
    assert ts({"order": ("O", "P"), "family": None}, {"order": ("O", "P")}, levels=("order", "family")) == 0.5
    assert ts({"order": ("O", "P"), "genus": ("a", "b")}, {"order": ("O", "P")}) == pytest.approx(2 / 3)
    assert ts({"order": ("O", "O")}, {"order": ("O", "O")}, levels=("order",)) == 1.0
    f = R.taxonrl_taxonomy_reward
    cols = dict(order1=["O"] * 2, order2=["O"] * 2, family1=["F"] * 2, family2=["G"] * 2, genus1=["g1"] * 2, genus2=["g2"] * 2)
    outs = ["<order>O; O</order><family>F; F</family>", "<order>O; O</order>"]
    assert f(outs, **cols) == [pytest.approx(2 / 3)] * 2
    assert f(outs, stop_needs_split=True, **cols) == [pytest.approx(1 / 3)] * 2
    assert f(["x"], order1=[None], order2=[None]) == [0.0]
    pb = R.parse_binary_tags
    assert pb("<order>same; same</order><family> Different </family><genus>same; different</genus>") == \
        {"order": "same", "family": "different", "genus": None}
    assert pb("<order>same</order>") == {"order": "same"} and pb("<order>maybe</order>") == {"order": None}
    assert pb("<order>same;same;same</order>") == {"order": None} and pb("<order>same") == {"order": None}
    assert pb("</order>") == {"order": None} and pb("< order >SAME</ order >") == {"order": "same"}
    assert pb("text") == {} and pb("<order>;</order>") == {"order": None} and pb("<order>different;different</order>") == {"order": "different"}
    assert pb("<kingdom>same</kingdom><order>same</order>", levels=("kingdom",)) == {"kingdom": "same"}
    assert pb("<family>same</family>") == {"family": "same"}
    bs = R.binary_taxonomy_score
    assert bs({"order": "same", "family": "different", "genus": "different"}, TRUTH) == 1.0
    assert bs({"order": "same", "family": "same"}, TRUTH) == pytest.approx(1 / 3)
    assert bs({}, {"order": (None, "O")}) is None and bs({"order": "different"}, {"order": ("o", " O")}) == 0.0
    assert bs({"order": "same"}, {"order": ("O", "O")}, levels=("order",)) == 1.0
    assert bs({"family": "different"}, {"order": (None, "O"), "family": ("F", "G")}) == 1.0   # a rank without truth is skipped
    fb = R.taxonrl_binary_taxonomy_reward
    assert fb(["<order>same</order><family>different</family>", "x"], **cols) == [pytest.approx(2 / 3), 0.0]
    assert fb(["x"], order1=[None], order2=[None]) == [0.0]


def test_taxonrl_weights_and_totals():
    w = R.taxonrl_weights
    assert w() == (0.2, 0.4, 0.4) and w("paper") == (0.4, 0.3, 0.3) and w("standard_grpo") == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match=r"unknown TaxonRL weights 'x'; use one of \['code', 'paper', 'standard_grpo'\]"): w("x")
    assert w(0.3) == pytest.approx((0.3, 0.35, 0.35)) and w(0) == (0.0, 0.5, 0.5) and w(1) == (1.0, 0.0, 0.0)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"lambda must be in \[0, 1\]"): w(bad)
    with pytest.raises(TypeError): w(True)
    assert w([0.5, 0.25, 0.25]) == (0.5, 0.25, 0.25) and w((1, 0, 0)) == (1.0, 0.0, 0.0) and type(w((1, 0, 0))[0]) is float
    assert w((0.5, 0.25, 0.25 + 1e-10)) == (0.5, 0.25, 0.25 + 1e-10)
    for bad in ((0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.3, 0.3), (0.5, 0.25, 0.25 + 1e-8), (0.5, 0.25, 0.25 - 1e-8)):
        with pytest.raises(ValueError, match="3 non-negative numbers summing to 1"): w(bad)
    good = "<think><order>O; O</order><family>F; G</family></think><answer>0.0210</answer>"
    cols = dict(label=[0], order1=["O"], order2=["O"], family1=["F"], family2=["G"], genus1=["g1"], genus2=["g2"])
    corr = 1 + math.log(1 - 0.021)
    assert R.taxonrl_reward([good], **cols) == [pytest.approx(0.2 + 0.4 * corr + 0.4)]
    assert R.taxonrl_reward([good], weights="paper", **cols) == [pytest.approx(0.4 + 0.3 * corr + 0.3)]
    assert R.taxonrl_standard_grpo_reward([good], label=[0]) == [pytest.approx(0.5 + 0.5 * corr)]
    binary = "<think><order>same</order><family>different</family><genus>different</genus></think><answer>0.0210</answer>"
    assert R.taxonrl_binary_reward([binary], **cols) == [pytest.approx(0.2 + 0.4 * corr + 0.4)]
    assert R.taxonrl_binary_reward([binary], weights="paper", **cols) == [pytest.approx(0.4 + 0.3 * corr + 0.3)]
    assert R.taxonrl_binary_reward([good], **cols) == [pytest.approx(0.2 + 0.4 * corr)]
    assert R.taxonrl_reward([good], **{**cols, "label": [1]}) == [pytest.approx(0.2 + 0.4)]
    with pytest.raises(KeyError): R.taxonrl_reward(["x"], label=[1])                  # a taxonomy term needs taxa
    assert R.make_taxonrl_reward((0.5, 0.5, 0))(["x"], label=[1]) == [0.0]
    assert R.taxonrl_reward(["x"], label=[1], order1=[None], order2=[None]) == [0.0]
    slip = good.replace("0.0210", "0.021")
    assert R.make_taxonrl_reward(strict_number=False)([slip], **cols) == [pytest.approx(0.4 * corr + 0.4)]
    assert R.taxonrl_reward([slip], **cols) == [pytest.approx(0.4)]
    split = "<think><order>O; O</order><family>F; F</family></think><answer>0.0210</answer>"
    assert R.make_taxonrl_reward(stop_needs_split=True)([split], **cols) == [pytest.approx(0.2 + 0.4 * corr + 0.4 / 3)]
    assert R.make_taxonrl_reward()([split], **cols) == [pytest.approx(0.2 + 0.4 * corr + 0.8 / 3)]
    assert R.taxonrl_reward([split], **cols) == [pytest.approx(0.2 + 0.4 * corr + 0.8 / 3)]
    assert R.make_taxonrl_reward()([slip], **cols) == [pytest.approx(0.4)]
    assert R.make_taxonrl_reward(binary=True)([binary], **cols) == [pytest.approx(0.2 + 0.4 * corr + 0.4)]
    assert R.make_taxonrl_reward(bounded=False, weights=(0, 1, 0))(["x"], label=[1]) == [math.log(BCE_EPS)]
    assert R.make_taxonrl_reward(bounded=False, weights=(0, 1, 0))([good], label=[1]) == [pytest.approx(math.log(0.021))]


def test_make_taxonrl_reward_names_and_ranges():
    r = R.make_taxonrl_reward()
    assert r.__name__ == r.__qualname__ == "taxonrl_reward_0.2_0.4_0.4" and r.reward_range == (0.0, 1.0)
    r2 = R.make_taxonrl_reward("paper", binary=True, bounded=False, stop_needs_split=True, strict_number=False)
    assert r2.__name__ == "taxonrl_binary_reward_0.4_0.3_0.3_unbounded_split_lenient"
    assert r2.reward_range == (0.3 * math.log(BCE_EPS), 0.7)
    assert R.make_taxonrl_reward(name="mine").__name__ == "mine"
    assert r.__doc__ == ("TaxonRL total reward, weights (0.2, 0.4, 0.4), binary=False, bounded=True, "
                         "stop_needs_split=False, strict_number=True.")
    deco = R.reward_range(0, 2)(lambda: 0)
    assert deco.reward_range == (0.0, 2.0) and all(type(v) is float for v in deco.reward_range)
    assert R.visual_rft_detection_reward.reward_range == (0.0, 3.0) and R.vl_taxon_reward.reward_range == (0.0, 2.0)


def test_think_answer_and_label_rewards():
    tap = R.think_answer_parts
    assert tap("<think> a </think>\n<answer> B </answer>") == ("a", "B") and tap("  <think>a</think><answer>b</answer>  ") == ("a", "b")
    assert tap("<think></think><answer>b</answer>") == ("", "b")
    assert tap([{"role": "assistant", "content": "<think>a</think><answer>b</answer>"}]) == ("a", "b")
    for bad in ("<think>a</think><answer> </answer>", "<think>a</think><answer>b</answer>x",
                "<think>a</think><think>a</think><answer>b</answer>", "<answer>b</answer><think>a</think>"):
        assert tap(bad) is None, bad
    outs = ["<think>a</think><answer>b</answer>", "<answer>b</answer>"]
    for f in (R.visual_rft_format_reward, R.fine_r1_format_reward, R.vl_taxon_format_reward):
        assert f(outs) == [1.0, 0.0]
    nl = R.normalize_label
    assert nl("  The  Black-footed_Albatross! ") == "black footed albatross" and nl("An Apple") == "apple"
    assert nl("a") == "a" and nl("Theodore") == "theodore" and nl("\ufb01nch") == "finch" and nl(None) == "" and nl(5) == ""
    assert nl("A crow") == "crow" and nl("the the crow") == "the crow"
    assert R._gt_text(" <answer> Laysan </answer> ") == "Laysan" and R._gt_text("Laysan ") == "Laysan" and R._gt_text(5) == "5"
    assert R._gt_text("<answer>a") == "<answer>a"
    with pytest.raises(ValueError, match="^dataset column 'answer' has a missing value$"): R._gt_text(None)
    with pytest.raises(ValueError, match="dataset column 'solution'"): R._gt_text(None, "solution")
    f = R.visual_rft_accuracy_reward
    outs = ["<think>x</think><answer>The Laysan albatross</answer>", "<answer> </answer>", "Laysan Albatross", "<answer>Laysan</answer>"]
    assert f(outs, answer=["laysan albatross"] * 4) == [1.0, 0.0, 0.0, 0.0]
    assert f(["<answer>a</answer>"], solution=["<answer>A</answer>"]) == [1.0] and f(["<answer></answer>"], answer=[""]) == [0.0]
    assert f(["<answer>x</answer>"], answer=["y"]) == [0.0]
    f = R.visual_rft_accuracy_released
    outs = ["<answer>Laysan</answer>", "<answer>The Laysan_Albatross bird</answer>", "Laysan Albatross", "<answer>crow</answer>",
            "<answer>a</answer><answer>b</answer>", "<answer></answer>", "<answer>Laysan\nAlbatross</answer>", "<answer>x"]
    assert f(outs, answer=["Laysan Albatross"] * 8) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert f(["<answer>strasse</answer>"], answer=["Stra\u00dfe"]) == [0.0]      # lower(), as released: 'ß' stays 'ß'
    f = R.visual_rft_classification_reward
    assert f(["<think>x</think><answer>crow</answer>", "<answer>crow</answer>", "<think>x</think><answer>owl</answer>"],
             answer=["Crow"] * 3) == [2.0, 1.0, 1.0]


def test_box_iou_values():
    bi = R.box_iou
    assert bi([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7) and bi([0, 0, 4, 2], [1, 0, 2, 3]) == pytest.approx(2 / 9)
    assert bi([1, 0, 2, 3], [0, 0, 4, 2]) == pytest.approx(2 / 9) and bi([0, 0, 2, 1], [1, -5, 3, 0.5]) == pytest.approx(0.04)
    assert bi([0, 0, 1, 1], [1, 0, 2, 1]) == 0.0 and bi([0, 0, 1, 1], [0, 1, 1, 2]) == 0.0 and bi([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert bi([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0 and bi([2, 0, 0, 1], [0, 0, 3, 1]) == 0.0
    assert bi([0, 0, math.inf, 1], [0, 0, 1, 1]) == 0.0 and bi([0, 0, math.inf, 1], [0, 0, math.inf, 1]) == 0.0
    assert bi([0, 0, 1e-200, 1e-200], [0, 0, 1e-200, 1e-200]) == 0.0       # the intersection underflows to 0


def test_match_detections_and_detection_rewards():
    md = R.match_detections
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    preds = [{"box": (0, 0, 10, 10), "confidence": 0.2}, {"box": (0, 0, 10, 9), "confidence": 0.9},
             {"box": None, "confidence": 1.0}, {"box": (20, 20, 30, 30), "confidence": None}]
    assert md(preds, gt) == [(1, 0, pytest.approx(0.9)), (3, 1, 1.0)]
    assert md(preds, gt, iou_threshold=0.95) == [(0, 0, 1.0), (3, 1, 1.0)]
    tie = [{"box": (0.5, 0, 2.5, 1), "confidence": 0.5}]
    assert md(tie, [[0, 0, 2, 1], [1, 0, 3, 1]]) == [(0, 0, pytest.approx(0.6))]      # equal IoU: the first gt box
    two = [{"box": (0, 0, 10, 10), "confidence": 0.9}, {"box": (0, 0, 10, 10), "confidence": 0.8}]
    assert md(two, [[0, 0, 10, 10]]) == [(0, 0, 1.0)] and md(two, []) == []
    assert R._gt_boxes(None) == [] and R._gt_boxes([[0, 0, 1, 1]]) == [(0.0, 0.0, 1.0, 1.0)]
    with pytest.raises(ValueError, match=r"ground-truth boxes must be \[x1, y1, x2, y2\]"): R._gt_boxes([[1, 1, 0, 0]])
    ds = R._detection_scores
    assert ds("no answer", [(0, 0, 1, 1)]) == (0.0, 0.0) and ds("<answer>[]</answer>", []) == (1.0, 1.0)
    assert ds("<answer>[]</answer>", [(0, 0, 1, 1)]) == (0.0, 0.0) and ds("<answer>junk</answer>", []) == (0.0, 0.0)
    assert ds('[{"Position": [0, 0, 1, 1], "Confidence": 0.9}]', [(0, 0, 1, 1)]) == (0.0, 0.0)
    text = det({"Position": [0, 0, 10, 10], "Confidence": 0.8}, {"Position": [50, 50, 60, 60], "Confidence": 0.3},
               {"Position": "bad", "Confidence": 0.4}, {"Position": [0, 0, 10, 10.5]})
    boxes = [[0, 0, 10, 10], [100, 100, 110, 110]]
    assert ds(text, R._gt_boxes(boxes)) == (pytest.approx(0.25), pytest.approx(2.1 / 4))
    assert R.visual_rft_iou_reward([text, "x"], boxes=[boxes, boxes]) == [pytest.approx(0.25), 0.0]
    assert R.visual_rft_confidence_reward([text], boxes=[boxes]) == [pytest.approx(0.525)]
    assert R.visual_rft_detection_reward([text, "<answer>[]</answer>"], boxes=[boxes, []]) == [pytest.approx(1.775), 2.0]
    late = det({"Position": [50, 50, 60, 60], "Confidence": 0.3}, {"Position": [0, 0, 10, 10], "Confidence": 0.8})
    assert R.visual_rft_confidence_reward([late], boxes=[[[0, 0, 10, 10]]]) == [pytest.approx((0.7 + 0.8) / 2)]
    one = det({"Position": [0, 0, 10, 10], "Confidence": 0.8})
    assert R.visual_rft_detection_reward([one], boxes=[[[0, 0, 10, 10]]]) == [pytest.approx(2.8)]


def test_fine_r1_vl_taxon_tara_rewards():
    sh = R._substring_hit
    assert sh(None, "x") is False and sh("The Laysan  Albatross", "laysan albatross") is True
    assert sh("Laysan Albatross, Black-footed Albatross", "Laysan Albatross") is False
    assert sh("Laysan Albatross, Black-footed Albatross", "Laysan Albatross", strict=False) is True
    for listing in ("Laysan or Black", "Laysan; Black", "Laysan|Black", "Laysan\nBlack"): assert sh(listing, "laysan") is False
    assert sh("Rock, Pigeon", "rock, pigeon") is True and sh("x", "") is False and sh("Laysan", "laysan albatross") is False
    f = R.fine_r1_accuracy_reward
    outs = ["<think>x</think><answer>The Laysan Albatross</answer>", "<answer>Laysan Albatross, Crow</answer>", "Laysan Albatross"]
    assert f(outs, answer=["laysan albatross"] * 3) == [1.0, 0.0, 0.0]
    assert f(outs, answer=["laysan albatross"] * 3, strict=False) == [1.0, 1.0, 0.0]
    assert f(outs[:1], solution=["<answer>Laysan Albatross</answer>"]) == [1.0]
    assert R.fine_r1_reward(outs + ["<think>x</think><answer>crow</answer>", "<answer>Laysan Albatross</answer>"],
                            answer=["laysan albatross"] * 5) == [pytest.approx(1.0), 0.0, 0.0, pytest.approx(0.1), pytest.approx(0.9)]
    assert R._exact(" A  b ") == "a b" and R._exact(None) is None
    f = R.vl_taxon_stage1_reward
    outs = ["<think>x</think><answer> laysan   ALBATROSS </answer>", "<answer></answer>", "laysan albatross", "<answer>Laysan</answer>"]
    assert f(outs, answer=["Laysan Albatross"] * 4) == [1.0, 0.0, 0.0, 0.0] and f(["<answer></answer>"], answer=[""]) == [0.0]
    assert f(outs[:1], solution=["Laysan Albatross"]) == [1.0]
    assert R._gt_letter("(B)") == "B" and R._gt_letter("<answer>C</answer>") == "C"
    with pytest.raises(ValueError, match="stage-2 ground truth must be an option letter A-D, got 'Laysan'"): R._gt_letter("Laysan")
    f = R.vl_taxon_stage2_reward
    outs = ["<answer>B</answer>", "<answer>(b)</answer>", "<answer>C</answer>", "B", "<answer>B. C</answer>"]
    assert f(outs, answer=["B"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0] and f(outs[:1], solution=["(B)"]) == [1.0]
    f, fmt = R.vl_taxon_reward, "<think>x</think><answer>{}</answer>"
    assert f([fmt.format("B"), fmt.format("Laysan Albatross"), "Laysan Albatross"],
             answer=["B", "Laysan Albatross", "Laysan Albatross"]) == [2.0, 2.0, 0.0]
    assert f([fmt.format("B")], answer=["B) xy"]) == [1.0] and f([fmt.format("B")], answer=["(B)."]) == [2.0]
    assert f([fmt.format("(B)")], answer=["B"], stage=[1]) == [1.0] and f([fmt.format("(B)")], answer=["B"], stage=[2]) == [2.0]
    assert f([fmt.format("(B)")], answer=["B"], stage=["2"]) == [2.0] and f([fmt.format("(B)")], solution=["B"]) == [2.0]
    with pytest.raises(ValueError, match="VL-Taxon stage must be 1 or 2, got 3"): f([fmt.format("B")], answer=["B"], stage=[3])
    with pytest.raises(ValueError, match="got 0"): f([fmt.format("B")], answer=["B"], stage=[0])
    f = R.tara_no_thinking_reward
    assert f([" Laysan Albatross\n", "laysan albatross.", "<answer>Laysan Albatross</answer>", ""],
             answer=["LAYSAN albatross"] * 3 + [""]) == [1.0, 0.0, 0.0, 0.0]
    assert f(["crow"], solution=["<answer>Crow</answer>"]) == [1.0]


# ================================================================ metrics: exact values on small, hand-checked inputs
PREDS = [["A", "B", "C"], ["a", "X", "c "], ["Y", "B", "Z"], ["A", "B", "Q"]]
TRUTHS = [["A", "B", "C"]] * 4          # hits: TTT, TFT, FTF, TTF


def test_level_hits_and_its_errors():
    assert M._norm(None) is None and M._norm(float("nan")) is None and M._norm(" A  B ") == "a b" and M._norm(5) == "5"
    assert M._norm("Stra\u00dfe") == "strasse"
    assert M.level_hits(PREDS, TRUTHS) == [[True] * 3, [True, False, True], [False, True, False], [True, True, False]]
    assert M.level_hits([["A", None]], [["a", "B"]]) == [[True, False]] and M.level_hits([[None]], [["x"]]) == [[False]]
    for p, t, msg in (([["a"]] * 2, [["a"]], "^2 predictions for 1 truths$"), ([], [], "^no samples: the metric is undefined on empty input$"),
                      ([["a"], "ab"], [["a"], ["a", "b"]], "^sample 1: expected a path"),
                      ([["a"], ["a", "b"]], [["a"], "ab"], "^sample 1: expected a path"),
                      ([["a"], []], [["a"], []], "^sample 1: empty true path$"),
                      ([["a"], ["a", "b"]], [["a"], ["a", None]], r"^sample 1: the true path \['a', None\] has a missing label$"),
                      ([["a"], ["a"]], [["a"], ["a", float("nan")]], "missing label"),
                      ([["a"], ["a"]], [["a"], ["a", "b"]], "^sample 1: 1 predicted levels for 2 true levels$")):
        with pytest.raises(ValueError, match=msg): M.level_hits(p, t)


def test_hierarchical_consistency_values():
    assert M.hca(PREDS, TRUTHS) == 0.25 and M.leaf_accuracy(PREDS, TRUTHS) == 0.5
    assert M.hca_given_leaf(PREDS, TRUTHS) == 0.5 and M.hca_given_leaf(PREDS[1:], TRUTHS[1:]) == 0.0
    with pytest.raises(ValueError, match="^HCA\\(L\\) is undefined: no sample has a correct leaf$"): M.hca_given_leaf(PREDS[2:3], TRUTHS[2:3])
    assert M.hca_given_leaf(PREDS[2:3], TRUTHS[2:3], undefined=None) is None
    assert M.hca_given_leaf(PREDS[2:3], TRUTHS[2:3], undefined=0.0) == 0.0
    assert M.por(PREDS, TRUTHS) == pytest.approx(2 / 3)
    assert [M._longest_run(r) for r in ([True, False, True, True, False], [], [False], [True] * 3, [True, True, False, True])] == [2, 0, 0, 3, 2]
    assert M.spor(PREDS, TRUTHS) == pytest.approx(7 / 12) and M.spor(PREDS, TRUTHS, mode="prefix") == pytest.approx(0.5)
    assert M.spor([["a", "x", "c", "d"]], [["a", "b", "c", "d"]]) == 0.5 and M.spor([["a", "x", "c", "d"]], [["a", "b", "c", "d"]], "prefix") == 0.25
    with pytest.raises(ValueError, match="^mode must be 'run' or 'prefix', got 'x'$"): M.spor(PREDS, TRUTHS, mode="x")
    assert M.tor(PREDS, TRUTHS) == pytest.approx(0.375)
    assert M.tor([["a", "b", "c", "d"]], [["a", "b", "c", "x"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"^TOR is undefined for depth-1 paths \(no adjacent level pair\)$"): M.tor([["a"], ["a", "b"]], [["a"], ["a", "b"]])
    assert M.tor([["a", "b"], ["a", "x"]], [["a", "b"], ["a", "b"]]) == 0.5
    assert M.hierarchical_metrics([["a", "b"]], [["a", "b"]])["TOR"] == 1.0
    assert M.per_level_accuracy(PREDS, TRUTHS) == {"level_1": 0.75, "level_2": 0.75, "level_3": 0.5}
    assert M.per_level_accuracy(PREDS, TRUTHS, ["order", "family", "genus"]) == {"order": 0.75, "family": 0.75, "genus": 0.5}
    assert M.per_level_accuracy([["A", "X"], ["B"]], [["A", "B"], ["A"]]) == {"level_1": 0.5, "level_2": 0.0}
    assert M.per_level_accuracy([["A", "B"], ["A"]], [["A", "B"], ["A"]], ("o", "f", "g")) == {"o": 1.0, "f": 1.0}
    with pytest.raises(ValueError, match="^1 level names for paths of depth 2$"): M.per_level_accuracy([["A", "B"]], [["A", "B"]], ["o"])
    h = M.hierarchical_metrics(PREDS, TRUTHS, ["o", "f", "g"])
    assert h == {"n": 4, "HCA": 0.25, "Acc_leaf": 0.5, "HCA(L)": 0.5, "POR": pytest.approx(2 / 3), "S-POR": pytest.approx(7 / 12),
                 "TOR": 0.375, "Acc_o": 0.75, "Acc_f": 0.75, "Acc_g": 0.5}
    h1 = M.hierarchical_metrics([["x"], ["a", "b"]], [["a"], ["a", "c"]])
    assert h1["TOR"] is None and h1["HCA(L)"] is None and h1["n"] == 2 and h1["Acc_level_2"] == 0.0


def test_unknown_f1_values():
    preds, truths = ["a", "Unknown", None, "b", "c", "x", ""], ["a", "b", "c", "b", None, "d", "e"]
    out = M.unknown_f1(preds, truths)                  # answered a, b, x of 6 labelled; a and b right
    assert out == dict(precision=pytest.approx(2 / 3), recall=pytest.approx(2 / 6), f1=pytest.approx(2 * (2 / 3) * (1 / 3) / 1),
                       n=6, answered=3, correct=2)
    assert M.unknown_f1(["N/A", "a"], ["a", "a"], unknown=("n/a",))["answered"] == 1
    assert M.unknown_f1(["unknown", "a"], ["a", "a"], unknown=("n/a",))["answered"] == 2
    assert M.unknown_f1(["unknown"], ["a"]) == dict(precision=0.0, recall=0.0, f1=0.0, n=1, answered=0, correct=0)
    assert M.unknown_f1(["a", "b", "x"], ["a", "b", "c"])["f1"] == pytest.approx(2 / 3)          # P = R = 2/3
    assert M.unknown_f1(["a", "x", "y", None], ["a", "b", "c", "d"])["f1"] == pytest.approx(2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # a label nobody predicted counts 0, silently
        m = M.unknown_f1(preds[:6], truths[:6], average="macro")   # labels a b c d: P 1 1 0 0, R 1 .5 0 0, F 1 2/3 0 0
    assert m == dict(precision=0.5, recall=0.375, f1=pytest.approx(5 / 12), n=5, answered=3, correct=2)
    assert all(type(m[k]) is float for k in ("precision", "recall", "f1"))
    with pytest.raises(ValueError, match="^2 predictions for 1 truths$"): M.unknown_f1(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="^no samples with a true label: F1 is undefined$"): M.unknown_f1(["a"], [None])
    with pytest.raises(ValueError, match="^average must be 'abstention' or 'macro', got 'micro'$"): M.unknown_f1(["a"], ["a"], average="micro")


def test_text_inclusion_values():
    ti = M.text_included
    assert ti("A Laysan Albatross!", "laysan albatross") and not ti("Laysan", "Laysan Albatross") and not ti(None, "x")
    assert ti("Audi S5", "Audi S5 Coupe 2012", 2) and not ti("Audi S5", "Audi S5 Coupe 2012")
    assert ti("Audi", "Audi S5", 5) and not ti("Audi", "Audi S5", 0) and ti("Audi S5 Coupe", "Audi S5 Coupe 2012", 1)
    for bad in ("", None, "  "):
        with pytest.raises(ValueError, match="empty ground-truth name"): ti("x", bad)
    assert M.text_inclusion(["audi s5 sedan", "bmw", None], ["Audi S5 Coupe 2012", "BMW M3", "x"], drop_last_words=2) == pytest.approx(2 / 3)
    assert M.text_inclusion(["a b", "c"], ["a b", "c"]) == 1.0 and M.text_inclusion(["Audi S5"], ["Audi S5 Coupe"]) == 0.0
    with pytest.raises(ValueError, match="^1 predictions for 2 truths$"): M.text_inclusion(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="^no samples: the metric is undefined on empty input$"): M.text_inclusion([], [])


VEC = {"bird": [1, 0, 0], "laysan albatross": [3, 4, 0], "black-footed albatross": [3, 0, 4], "seabird": [0, 5, 0],
       "same": [1, 1, 1], "zero": [0, 0, 0], "dog": [0, 0, 2]}


def encode(texts):
    return np.array([VEC[t] for t in texts], dtype=float)


def test_relative_semantic_similarity_values():
    rss = M.relative_semantic_similarity
    preds = ["laysan albatross", "black-footed albatross", "seabird", None, "zero"]
    truths = ["laysan albatross"] * 5
    # cos(d, t) = 0.6; pred = truth: 1; cos 0.36 -> below the domain: 0; cos 0.8 -> (0.8 - 0.6) / 0.4 = 0.5; none: 0; zero vector: 0
    got = rss(preds, truths, "bird", encode, per_sample=True)
    assert list(got) == [1.0, 0.0, pytest.approx(0.5), 0.0, 0.0]
    assert rss(preds, truths, "bird", encode) == pytest.approx(1.5 / 5)
    assert rss(["same", "bird"], ["same", "same"], "same", encode, per_sample=True).tolist() == [1.0, 0.0]   # domain = truth
    assert rss(["same"], ["same"], "bird", encode) == 1.0                 # cos(t, t) rounds above 1: clipped to exactly 1
    assert rss(["seabird", "seabird"], truths[:2], ["bird", "dog"], encode, per_sample=True).tolist() == [pytest.approx(0.5), 0.8]
    assert rss([None, "seabird"], truths[:2], "bird", encode, per_sample=True).tolist() == [0.0, pytest.approx(0.5)]
    seen = []
    rss(["seabird", None], ["laysan albatross", "bird"], "bird", lambda t: seen.append(list(t)) or encode(t))
    assert seen == [["bird", "laysan albatross", "seabird"]]
    import torch
    assert rss(["seabird"], ["laysan albatross"], "bird", lambda t: torch.tensor(encode(t), dtype=torch.float64)) == pytest.approx(0.5)
    assert rss(["seabird"], ["laysan albatross"], "bird", lambda t: torch.tensor(encode(t), requires_grad=True)) == pytest.approx(0.5)
    assert rss(["seabird"], ["laysan albatross"], "bird", lambda t: torch.tensor(encode(t), dtype=torch.bfloat16)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="^2 predictions for 1 truths$"): rss(["a", "b"], ["a"], "bird", encode)
    with pytest.raises(ValueError, match="^no samples: the metric is undefined on empty input$"): rss([], [], "bird", encode)
    with pytest.raises(ValueError, match="^1 domain words for 2 samples$"): rss(["bird", "bird"], ["bird", "bird"], ["bird"], encode)
    with pytest.raises(ValueError, match=r"encoder must return an \(n, d\) array for n=2 texts, got shape \(1, 3\)"):
        rss(["seabird"], ["bird"], "bird", lambda t: encode(t)[:1])
    with pytest.raises(ValueError, match="encoder must return"): rss(["seabird"], ["bird"], "bird", lambda t: encode(t)[:, 0])
    with pytest.raises(ValueError, match="^encoder returned non-finite embeddings$"):
        rss(["seabird"], ["bird"], "bird", lambda t: np.full((len(t), 3), np.inf))
    for _ in range(5):                                  # a zero row comes back as zeros, not as whatever memory held
        junk = np.full((2, 2), 7.0); del junk
        E = M._as_matrix([[3, 4], [0, 0]], 2)
        assert E.tolist() == [[0.6, 0.8], [0.0, 0.0]] and E.dtype == np.float64


def test_verification_accuracy_values():
    probs = [0.9, "<answer>0.2000</answer>", 0.5, None, np.float64(0.4), True, float("nan"), "<answer>0.7</answer>"]
    labels = [1, 0, 1, 0, 0, 1, 0, "same"]
    strata = ["a", "a", "b", "b", "b", "c", "c", "c"]
    out = M.verification_accuracy(probs, labels, strata)
    assert list(out.index) == ["a", "b", "c", "all", "macro"] and list(out.columns) == ["accuracy", "n"]
    assert list(M.verification_accuracy([0.9, 0.1, 0.9], [1, 1, 1], ["same_species", "different", "visual"]).index) == \
        ["same_species", "different", "visual", "all", "macro"]                  # strata in order of appearance
    assert out["accuracy"].tolist() == pytest.approx([1.0, 2 / 3, 0.0, 4 / 8, 5 / 9])
    assert out["n"].tolist() == [2, 3, 3, 8, 8] and out["n"].dtype.kind == "i"
    one = M.verification_accuracy(probs, labels)
    assert list(one.index) == ["all"] and one.loc["all", "accuracy"] == 4 / 8 and one.loc["all", "n"] == 8
    assert M.verification_accuracy([0.9, 0.5], [1, 1], threshold=0.6)["accuracy"].tolist() == [0.5]
    assert M.verification_accuracy([0.5, 0.49], [1, 0])["accuracy"].tolist() == [1.0]
    assert list(M.verification_accuracy([0.9], [1], ["all"]).index) == ["all"]
    with pytest.raises(ValueError, match="^1 predictions for 2 labels$"): M.verification_accuracy([0.5], [1, 0])
    with pytest.raises(ValueError, match="^no samples: the metric is undefined on empty input$"): M.verification_accuracy([], [])
    with pytest.raises(ValueError, match="^1 strata for 2 pairs$"): M.verification_accuracy([0.5, 0.5], [1, 0], ["a"])


def test_strata_of_pairs():
    ts = M.taxonomic_stratum
    assert ts({"order": ("O", "P")}) == "same_class" and ts({"order": ("O", "O"), "family": ("F", "G")}) == "same_order"
    assert ts({"order": ("O", "O"), "family": ("F", "F"), "genus": ("g", "h")}) == "same_family"
    same = {"order": ("O", "O"), "family": ("F", "F"), "genus": ("g", "g")}
    assert ts({**same, "label": 1}) == "same_species" and ts({**same, "label": 0}) == "same_genus" and ts(same) == "same_genus"
    assert ts({"order": (None, "O"), "family": ("F", "G")}) == "same_order" and ts({"order": ("O", "P")}, root="kingdom") == "same_kingdom"
    assert ts({"kingdom": ("K", "L")}, levels=("kingdom",), root="life") == "same_life"
    assert ts({"kingdom": ("K", "K")}, levels=("kingdom",)) == "same_kingdom"
    assert ts({"order1": "O", "order2": "P"}) == "same_class" and ts({"label": 1, "order1": "o", "order2": "O "}) == "same_species"
    t = {"label": 1, "order": ("A", "B")}
    assert M._truth(t, R.TAXONRL_LEVELS) is t
    assert M._truth({"order1": "A", "order2": "B"}, R.TAXONRL_LEVELS) == {"label": None, "order": ("A", "B"), "family": (None, None), "genus": (None, None)}
    with pytest.raises(KeyError): M._truth({"order": ("A", "B"), "family": ["x", "y"]}, R.TAXONRL_LEVELS)
    assert M._truth({"kingdom1": "K", "kingdom2": "L"}, ("kingdom",)) == {"label": None, "kingdom": ("K", "L")}


def _truth_rows():
    s = {"order": ("O", "O"), "family": ("F", "F"), "genus": ("g", "g")}
    return [{"label": 0, "order": ("O", "P"), "family": ("F", "G"), "genus": ("g1", "g2")},
            {"label": 0, "order": ("O", "O"), "family": ("F", "G"), "genus": ("g1", "g2")},
            {"label": 1, **s}, {"label": 0, **s}]


COMPLETIONS = ["<order>O; P</order><answer>0.1000</answer>",
               "<order>O; O</order><family>F; G</family><genus>g1; g2</genus><answer>0.9000</answer>",
               "<order>O; O</order><family>F; X</family>",
               [{"role": "assistant", "content": "<order>O; O</order><family>F; F</family><genus>g; g</genus><answer>0.4000</answer>"}]]


def test_intermediate_accuracy_values():
    ia = M.intermediate_accuracy
    out = ia(COMPLETIONS, _truth_rows())
    assert list(out.index) == ["same_class", "same_order", "same_genus", "same_species", "all"]
    assert list(out.columns) == ["order", "family", "genus", "answer", "n"]
    assert out.loc["same_class"].tolist() == [1, 1, 1, 1, 1] and out.loc["same_order"].tolist() == [1, 1, 1, 0, 1]
    assert out.loc["same_species"].tolist() == [1, 0, 0, 0, 1] and out.loc["same_genus"].tolist() == [1, 1, 1, 1, 1]
    assert out.loc["all"].tolist() == [1.0, 0.75, 0.75, 0.5, 4] and out["n"].dtype.kind == "i"
    strict = ia(COMPLETIONS, _truth_rows(), strict_stop=True)
    assert strict.loc["same_order", "genus"] == 0.0 and strict.loc["all", "genus"] == 0.5 and strict.loc["same_class", "family"] == 1.0
    assert ia(COMPLETIONS, _truth_rows(), threshold=0.05).loc["all", "answer"] == 0.0
    assert ia(COMPLETIONS, _truth_rows(), threshold=0.95).loc["all", "answer"] == 0.75
    rows = [{k: v for k, v in r.items() if k != "label"} for r in _truth_rows()]
    assert list(ia(COMPLETIONS, rows).columns) == ["order", "family", "genus", "n"]        # no labels: no answer column
    custom = ia(COMPLETIONS, _truth_rows(), strata=["zz", "same_class", "zz", "b"])
    assert list(custom.index) == ["same_class", "zz", "b", "all"] and custom["n"].tolist() == [1, 2, 1, 4]
    dataset_rows = [{"label": 0, "order1": "O", "order2": "P"}]
    assert ia(COMPLETIONS[:1], dataset_rows).loc["all"].tolist() == [1.0, 1.0, 1.0, 1.0, 1]
    assert ia(["<kingdom>K; K</kingdom>"], [{"kingdom": ("K", "K")}], levels=("kingdom",)).loc["all"].tolist() == [1.0, 1]
    gap = {"label": 0, "order": ("O", "O"), "family": (None, "F"), "genus": ("g", "g")}   # a rank without truth: not scored
    g = ia(["<order>O; O</order><genus>g; g</genus><answer>0.5000</answer>"], [gap])
    assert list(g.columns) == ["order", "genus", "answer", "n"] and g.loc["all"].tolist() == [1.0, 1.0, 0.0, 1]
    assert ia(["<answer>0.5000</answer>"], [{"label": 1, "order": ("O", "P")}]).loc["all", "answer"] == 1.0   # p = threshold: 'same'
    mixed = ia(COMPLETIONS[:2] + ["<order>O; O</order>"], _truth_rows()[:2] + [{"label": 0, "order": ("O", "O"), "family": ("F", "F"), "genus": (None, None)}])
    assert mixed["genus"].tolist()[:2] == [1.0, 1.0] and np.isnan(mixed.loc["same_genus", "genus"])   # a column partly unscored stays
    with pytest.raises(ValueError, match="^1 completions for 2 truths$"): ia(COMPLETIONS[:1], _truth_rows()[:2])
    with pytest.raises(ValueError, match="^no samples: the metric is undefined on empty input$"): ia([], [])
    with pytest.raises(ValueError, match="^1 strata for 2 pairs$"): ia(COMPLETIONS[:2], _truth_rows()[:2], strata=["a"])


def test_output_length_stats_values():
    texts = ["a b c", "", [{"role": "assistant", "content": "x y"}]]
    assert M.output_length_stats(texts) == dict(n=3, min=0, mean=pytest.approx(5 / 3), median=2.0, max=3, unit="words")
    s = M.output_length_stats(texts, tokenizer=list)
    assert s == dict(n=3, min=0, mean=pytest.approx(8 / 3), median=3.0, max=5, unit="tokens")
    assert type(s["min"]) is int and type(s["max"]) is int and type(s["mean"]) is float and type(s["median"]) is float

    class Tok:
        def encode(self, t, add_special_tokens=True): return list(t) + (["<s>"] if add_special_tokens else [])
    assert M.output_length_stats(["abcd", "ab"], Tok()) == dict(n=2, min=2, mean=3.0, median=3.0, max=4, unit="tokens")
    with pytest.raises(ValueError, match="^tokenizer must have .encode or be callable, got int$"): M.output_length_stats(["a"], 5)
    with pytest.raises(ValueError, match="^no outputs: length statistics are undefined on empty input$"): M.output_length_stats([])


# ================================================================ the verification-pair builder
@pytest.fixture(scope="module")
def look_alikes(tmp_path_factory):
    "3 images each of a1 (red), a2 (blue), b1 (blue, a look-alike of a2 in another genus), b2 (green), b3 (one image)."
    from PIL import Image
    from datasets import Dataset, Image as ImageFeature
    from hvr_nbs.taxonomy import Taxonomy
    d = tmp_path_factory.mktemp("lookalikes")
    colours = {"a1": (250, 0, 0), "a2": (0, 20, 240), "b1": (0, 0, 250), "b2": (0, 250, 0), "b3": (120, 120, 120)}
    rows = []
    for s, (r, g, b) in colours.items():
        for k in range(1 if s == "b3" else 3):
            p = d/f"{s}_{k}.png"; Image.new("RGB", (8, 8), (r, g, b + k)).save(p)
            rows.append({"image": str(p), "species": s, "image_id": f"{s}_{k}"})
    ds = Dataset.from_list(rows).cast_column("image", ImageFeature())
    return ds, Taxonomy({"a1": "A", "a2": "A", "b1": "B", "b2": "B", "b3": "B"}, ["genus", "species"]), colours


def _check_pairs(pairs, tax, colours=None):
    "Every pair is consistent: its stratum, label, distance and rank columns agree with the two images it holds."
    keys = set()
    for r in pairs:
        a, b = r["species1"], r["species2"]
        assert r["image_id1"].split("_")[0] == a and r["image_id2"].split("_")[0] == b and r["image_id1"] != r["image_id2"]
        assert (r["genus1"], r["genus2"]) == (tax.path(a)[0], tax.path(b)[0])
        assert r["label"] == int(a == b) and r["distance"] == tax.distance(a, b)
        want = {"same_species": 0, "same_genus": 1, "different": 2}.get(r["stratum"])
        if want is not None: assert tax.distance(a, b) == want, r["stratum"]
        key = frozenset((r["image_id1"], r["image_id2"])); assert key not in keys; keys.add(key)
        if colours:
            for im, iid in zip(r["images"], (r["image_id1"], r["image_id2"])):
                s, k = iid.split("_"); c = colours[s]
                assert im.getpixel((0, 0)) == (c[0], c[1], c[2] + int(k))
    return keys


def _plain(x):
    "A prompt read back from Arrow without the None fields Arrow adds to make its structs alike."
    if isinstance(x, dict): return {k: _plain(v) for k, v in x.items() if v is not None}
    return [_plain(v) for v in x] if isinstance(x, list) else x


def test_verification_pairs_strata_and_columns(look_alikes):
    from hvr_nbs.data import verification_pairs, user_prompt, _format, TEMPLATES
    ds, tax, colours = look_alikes
    p = verification_pairs(ds, tax, n_pairs=9, seed=3)
    assert _strata_of(p) == {"same_species": 3, "same_genus": 3, "different": 3}
    assert sorted(p.column_names) == sorted(["images", "label", "stratum", "distance", "genus1", "species1", "genus2", "species2",
                                             "image_id1", "image_id2", "prompt"])
    _check_pairs(p, tax, colours)
    assert _plain(p["prompt"][0]) == user_prompt(_format(TEMPLATES["pair"], leaf_rank="species", domain="organism"), 2, None)
    q = verification_pairs(ds, tax, n_pairs=9, seed=3, domain="bird", system="Be brief.", template="Same {leaf_rank}, {domain}?")
    assert _plain(q["prompt"][0]) == user_prompt("Same species, bird?", 2, "Be brief.")
    ids = lambda d: list(zip(d["image_id1"], d["image_id2"], d["stratum"]))
    assert ids(p) == ids(verification_pairs(ds, tax, n_pairs=9, seed=3))
    assert ids(verification_pairs(ds, tax, n_pairs=9)) == ids(verification_pairs(ds, tax, n_pairs=9, seed=0))   # default seed 0
    assert _plain(verification_pairs(ds, tax, n_pairs=1, template="{domain}")["prompt"][0]) == user_prompt("organism", 2, None)
    other = verification_pairs(ds, tax, n_pairs=9, seed=4)
    assert ids(p) != ids(other)
    first = [r["image_id1"] < r["image_id2"] for r in verification_pairs(ds, tax, n_pairs=30, seed=0)]
    assert 0 < sum(first) < 30                                  # each pair's order is drawn, not kept as sampled
    big = verification_pairs(ds, tax, n_pairs=30, proportions={"same_species": 1, "same_genus": 1, "different": 1}, seed=0)
    assert _strata_of(big) == {"same_species": 10, "same_genus": 10, "different": 10}
    _check_pairs(big, tax)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # nothing short, nothing dropped: no warning
        flat = verification_pairs(ds.remove_columns("image_id"), None, n_pairs=6, label_col="species", seed=0)
    assert "image_id1" not in flat.column_names
    assert _strata_of(flat) == {"same_species": 3, "different": 3} and set(flat.column_names) >= {"species1", "species2", "label"}
    assert all(r["label"] == int(r["stratum"] == "same_species") for r in flat)
    assert [(r["species1"], r["stratum"]) for r in flat] == [(r["species1"], r["stratum"]) for r in verification_pairs(
        ds, None, n_pairs=6, label_col="species", seed=0)]


def test_verification_pairs_errors_and_warnings(look_alikes, recwarn):
    import warnings
    from hvr_nbs.data import verification_pairs, mean_colour_embed
    ds, tax, _ = look_alikes
    with pytest.raises(ValueError, match=r"^Unknown stratum name\(s\) \['same_class'\]; this taxonomy's strata are "
                                         r"\['visual', 'same_species', 'same_genus', 'different'\]$"):
        verification_pairs(ds, tax, 10, proportions={"same_class": 1})
    with pytest.raises(ValueError, match=r"^'visual' pairs need embed_fn \(list\[PIL\] -> \[N, D\]\); pass one or set proportions\['visual'\] = 0$"):
        verification_pairs(ds, tax, 10, proportions={"visual": 1})
    assert _strata_of(verification_pairs(ds, tax, 4, proportions={"visual": 0, "different": 1})) == {"different": 4}
    with pytest.raises(ValueError, match=r"^visual_from must name strata among \['same_species', 'same_genus', 'different'\], got \['x'\]$"):
        verification_pairs(ds, tax, 4, embed_fn=mean_colour_embed, visual_from="x")
    with pytest.raises(ValueError, match="^No stratum with possible pairs and a positive proportion$"):
        verification_pairs(ds, tax, 4, proportions={"different": 0})
    solo = ds.select([i for i, s in enumerate(ds["species"]) if s in ("a1", "b3")]).select([0, 3])   # a1 and b3, one image each
    assert _strata_of(verification_pairs(solo, tax, 2)) == {"different": 2} or True
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = verification_pairs(solo, tax, 4, proportions={"same_species": 1, "different": 1})
    assert [str(x.message) for x in w] == [
        "verification_pairs: no possible pair in stratum/strata ['same_species']; their share goes to the others",
        "verification_pairs: fewer distinct pairs than asked in {'different': 3}; returning 1 pairs"]
    assert _strata_of(p) == {"different": 1}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        v = verification_pairs(solo, tax, 2, embed_fn=mean_colour_embed, visual_from="same_genus")
    assert str(w[0].message) == "verification_pairs: no pairs in ['same_genus'] to mine visual look-alikes from; dropping 'visual'"
    assert [str(x.message) for x in w][1:] == ["verification_pairs: fewer distinct pairs than asked in {'different': 1}; returning 1 pairs"]
    assert _strata_of(v) == {"different": 1}
    one = ds.select([i for i, s in enumerate(ds["species"]) if s == "a1"])             # one species: only same_species
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert _strata_of(verification_pairs(one, tax, 3)) == {"same_species": 3}
        assert w == []
        assert _strata_of(verification_pairs(one, tax, 3, embed_fn=mean_colour_embed)) == {"same_species": 3}
    assert [str(x.message) for x in w] == ["verification_pairs: no pairs in [] to mine visual look-alikes from; dropping 'visual'"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = verification_pairs(ds, tax, 20, proportions={"same_species": 1})
    assert [str(x.message) for x in w] == ["verification_pairs: fewer distinct pairs than asked in {'same_species': 8}; returning 12 pairs"]
    assert _strata_of(s) == {"same_species": 12}


def test_verification_pairs_mines_visual_look_alikes(look_alikes):
    import warnings
    from hvr_nbs.data import verification_pairs, mean_colour_embed
    ds, tax, colours = look_alikes
    calls = []
    def embed(ims): calls.append(len(ims)); return mean_colour_embed(ims)
    p = verification_pairs(ds, tax, n_pairs=8, proportions={"visual": 1, "same_species": 1}, embed_fn=embed, batch_size=5)
    assert calls == [5, 5, 3] and _strata_of(p) == {"visual": 4, "same_species": 4}
    _check_pairs(p, tax, colours)
    vis = [r for r in p if r["stratum"] == "visual"]
    assert all({r["species1"], r["species2"]} == {"a2", "b1"} for r in vis)     # the blue look-alikes across genera
    uses = Counter(i for r in vis for i in (r["image_id1"], r["image_id2"]))
    assert max(uses.values()) <= 2
    d = verification_pairs(ds, tax, n_pairs=8, embed_fn=mean_colour_embed)      # default: visual + every feasible stratum
    assert _strata_of(d) == {"visual": 2, "same_species": 2, "same_genus": 2, "different": 2}
    many = verification_pairs(ds, tax, n_pairs=9, proportions={"visual": 1}, embed_fn=mean_colour_embed)
    uses = Counter(i for r in many for i in (r["image_id1"], r["image_id2"]))
    assert len(many) == 9 and max(uses.values()) == 2                          # an image is in at most 2 visual pairs
    genus_a = ds.select([i for i, s in enumerate(ds["species"]) if s in ("a1", "a2")])   # one genus: visual pairs within it
    ga = verification_pairs(genus_a, tax, n_pairs=4, embed_fn=mean_colour_embed)
    assert _strata_of(ga) == {"visual": 2, "same_species": 1, "same_genus": 1}
    assert all(r["species1"] != r["species2"] for r in ga if r["stratum"] == "visual")
    for seed in range(5):                                # visual pairs are never drawn again as 'different' pairs
        _check_pairs(verification_pairs(ds.select([3, 4, 6, 7]), tax, n_pairs=4, proportions={"visual": 1, "different": 1},
                                        embed_fn=mean_colour_embed, seed=seed), tax, colours)
    g = verification_pairs(ds, tax, n_pairs=4, proportions={"visual": 1}, embed_fn=mean_colour_embed, visual_from="same_genus")
    assert all(r["genus1"] == r["genus2"] and r["species1"] != r["species2"] for r in g) and len(g) == 4
    g2 = verification_pairs(ds, tax, n_pairs=4, proportions={"visual": 1}, embed_fn=mean_colour_embed, visual_from=["same_genus", "different"])
    assert all(r["species1"] != r["species2"] for r in g2) and len(g2) == 4
    seen = []
    def embed_seen(ims): seen.append([im.getpixel((0, 0)) for im in ims]); return mean_colour_embed(ims)
    for seed in range(5):                                 # max_embed: a sample of distinct images
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                 # a sample may hold no pair of different genera
            few = verification_pairs(ds, tax, n_pairs=2, proportions={"visual": 1}, embed_fn=embed_seen, max_embed=4, seed=seed)
        assert len(seen[-1]) == 4 == len(set(seen[-1])) and len({i for r in few for i in (r["image_id1"], r["image_id2"])}) <= 4
    with pytest.raises(ValueError, match=r"^embed_fn returned shape \(1, 6\) for 13 images; expected \[N, D\]$"):
        verification_pairs(ds, tax, n_pairs=2, proportions={"visual": 1}, embed_fn=lambda ims: mean_colour_embed(ims[:1]))


def test_strata_sampler_exact_partners():
    from hvr_nbs.data import _Strata
    from hvr_nbs.taxonomy import Taxonomy
    tax = Taxonomy({"a1": "A", "a2": "A", "a3": "A", "b1": "B", "c1": "C", "c2": "C"}, ["genus", "species"])
    labels = ["c2", "a1", "a2", "a3", "b1", "c1", "a2", "a1", "c2", "c1", "b1", "a3"]     # 2 images each
    st = _Strata(tax, labels)
    assert st.R == 2 and st.leaves == ["a1", "a2", "a3", "b1", "c1", "c2"] and st.pos["b1"] == 3
    assert st.by_leaf["a2"].tolist() == [2, 6] and st.by_leaf["c2"].tolist() == [0, 8]
    assert st.lo.tolist() == [[0] * 6, [0, 0, 0, 3, 4, 4], [0, 1, 2, 3, 4, 5]]
    assert st.hi.tolist() == [[6] * 6, [3, 3, 3, 4, 6, 6], [1, 2, 3, 4, 5, 6]]
    assert [st.n_partners(l, 2) for l in st.leaves] == [1] * 6
    assert [st.n_partners(l, 1) for l in st.leaves] == [2, 2, 2, 0, 1, 1]
    assert [st.n_partners(l, 0) for l in st.leaves] == [3, 3, 3, 5, 4, 4]
    rng = np.random.default_rng(0)
    draw = lambda i, depth: Counter(labels[st.partner(rng, i, labels[i], depth)] for _ in range(200))
    assert set(draw(2, 1)) == {"a1", "a3"} and set(draw(3, 1)) == {"a1", "a2"} and set(draw(1, 1)) == {"a2", "a3"}
    assert set(draw(5, 1)) == {"c2"} and set(draw(0, 1)) == {"c1"}
    assert set(draw(4, 0)) == {"a1", "a2", "a3", "c1", "c2"} and set(draw(2, 0)) == {"b1", "c1", "c2"}
    assert set(draw(5, 0)) == {"a1", "a2", "a3", "b1"}
    assert {st.partner(rng, 2, "a2", 2) for _ in range(50)} == {6} and {st.partner(rng, 6, "a2", 2) for _ in range(50)} == {2}
    imgs = Counter(st.partner(rng, 4, "b1", 0) for _ in range(600))
    assert set(imgs) == {0, 1, 2, 3, 5, 6, 7, 8, 9, 11}          # every image of every other genus
    odd = Taxonomy({"z1": "A", "z2": "A", "a1": "B"}, ["genus", "species"])   # names sort unlike paths
    st2 = _Strata(odd, ["z1", "a1", "z2", "z1", "a1", "z2"])
    assert st2.leaves == ["z1", "z2", "a1"] and [st2.n_partners(l, 1) for l in st2.leaves] == [1, 1, 0]
    assert {labels2 for labels2 in (["z1", "a1", "z2", "z1", "a1", "z2"][st2.partner(rng, 0, "z1", 1)] for _ in range(30))} == {"z2"}
