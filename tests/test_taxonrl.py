"Fast checks of hvr_nbs.taxonrl's pure pieces: prompt, ideal traces vs the rewards, ground-truth packing, configs, CLI."
import itertools, random
import pytest
from hvr_nbs.taxonrl import (LEVELS, taxonrl_prompt, reference_completion, pack_ground_truth, schema_target, method_spec,
                             EXPERIMENTS, attribute_reward, accelerate_config, ACCELERATE_KINDS, parse_args, paper_table,
                             verification_hit)
from hvr_nbs.rewards import (taxonrl_format_reward, taxonrl_correctness_reward, taxonrl_taxonomy_reward,
                             taxonrl_binary_taxonomy_reward, parse_taxonrl_ground_truth)

NAMES = {"order": ["Aformes", "Bformes"], "family": ["Aidae", "Bidae"], "genus": ["Ga", "Gb"]}


def _pairs():
    "Every pattern of agreement between two 3-rank paths that a real taxonomy allows (a split stays split below)."
    for split in range(4):  # rank index of the first difference (3: none)
        p1 = {l: NAMES[l][0] for l in LEVELS}
        p2 = {l: NAMES[l][0] if k < split else NAMES[l][1] for k, l in enumerate(LEVELS)}
        for same_species in ([True, False] if split == 3 else [False]):
            yield p1, p2, same_species


def _cols(p1, p2, same, n):
    c = {"label": [int(same)] * n}
    for l in LEVELS: c[f"{l}1"], c[f"{l}2"] = [p1[l]] * n, [p2[l]] * n
    return c


@pytest.mark.parametrize("p1,p2,same", list(_pairs()))
def test_ideal_trace_earns_every_reward(p1, p2, same):
    concrete = reference_completion(p1, p2, same)
    binary = reference_completion(p1, p2, same, binary=True)
    c = _cols(p1, p2, same, 1)
    assert taxonrl_format_reward([concrete], **c) == [1.0] and taxonrl_format_reward([binary], **c) == [1.0]
    assert taxonrl_correctness_reward([concrete], **c) == [pytest.approx(1.0)]
    assert taxonrl_taxonomy_reward([concrete], **c) == [1.0]
    assert taxonrl_binary_taxonomy_reward([binary], **c) == [1.0]
    assert verification_hit([concrete], [int(same)]) == [1.0]


@pytest.mark.parametrize("p1,p2,same", list(_pairs()))
def test_ground_truth_string_round_trips(p1, p2, same):
    row = {"label": int(same), "distance": 1, **{f"{l}{i}": p[l] for l in LEVELS for i, p in ((1, p1), (2, p2))}}
    gt = parse_taxonrl_ground_truth(pack_ground_truth(row))
    assert gt["label"] == int(same)
    for l in LEVELS: assert (gt[f"{l}1"], gt[f"{l}2"]) == (p1[l], p2[l])


def test_schema_target_is_formatted_but_uninformative():
    p1, p2, _ = next(_pairs())
    row = {f"{l}{i}": p[l] for l in LEVELS for i, p in ((1, p1), (2, p2))}
    t = schema_target(row)
    assert taxonrl_format_reward([t], label=[0], **{k: [v] for k, v in row.items()}) == [1.0]
    assert all(f"<{l}>" in t for l in LEVELS) and schema_target(row) == t  # reproducible
    # uninformative: the answer does not depend on the label, and varies across pairs
    assert schema_target({**row, "label": 1}) == schema_target({**row, "label": 0})
    answers = {schema_target({**row, "image_id1": str(i)}).rsplit("<answer>", 1)[1] for i in range(20)}
    assert len(answers) > 10 and all(len(a.split("<")[0].split(".")[1]) == 4 for a in answers)


def test_prompts_and_methods():
    assert "stop" in taxonrl_prompt() and "stop" not in taxonrl_prompt(binary=True)
    for m in itertools.chain(*EXPERIMENTS.values()):
        s = method_spec(m)
        if s["reward_weights"]: assert sum(s["reward_weights"]) == pytest.approx(1.0)
    with pytest.raises(ValueError): method_spec("ppo")


def test_attribute_reward_never_raises_on_junk():
    rnd = random.Random(0)
    junk = ["", None, 3, "<age>", "<age>a;b;c</age>", "<sex>x; y</sex>" * 3] + \
           ["".join(rnd.choice("<>/;agesx ") for _ in range(30)) for _ in range(200)]
    out = attribute_reward(junk, age1=["a"] * len(junk), age2=["b"] * len(junk), sex1=["x"] * len(junk), sex2=["y"] * len(junk))
    assert all(0.0 <= v <= 1.0 for v in out)


def test_accelerate_configs_and_cli():
    for k in ACCELERATE_KINDS: assert accelerate_config(k, 4)["num_processes"] == (1 if k == "single_gpu" else 4)
    a = parse_args(["--profile", "gpu-small", "--seeds", "0,1,2"])
    assert (a.profile, a.seeds) == ("gpu-small", "0,1,2")
    assert paper_table(1).loc[("Bird", "TaxonRL"), "Average"] == 91.7


def test_command_line_trains_and_writes_tables(tmp_path):
    "`python -m hvr_nbs.taxonrl` (what `accelerate launch -m` runs) trains, evaluates and writes its tables on CPU."
    import os, subprocess, sys
    import pandas as pd
    env = dict(os.environ, IN_TEST="1", HVR_CACHE=os.environ.get("HVR_CACHE") or str(tmp_path/"cache"))
    out = tmp_path/"run"
    cmd = [sys.executable, "-m", "hvr_nbs.taxonrl", "--profile", "smoke", "--methods", "zero-shot,grpo", "--steps", "1",
           "--n-eval", "4", "--out", str(out), "--set", "train__sft_steps=4", "--set", "train__max_completion_length=16",
           "--set", "eval__max_new_tokens=16"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_csv(out/"results.csv")
    assert set(res["method"]) == {"zero-shot", "grpo"} and (res.groupby("method").size() == 4).all()
    for f in ("table1_accuracy.csv", "table3_lengths.csv", "manifest.json", "train_logs.csv"): assert (out/f).exists(), f
    for m in ("zero-shot", "grpo"): assert (out/f"{m}-s0"/"manifest.json").exists() and (out/f"{m}-s0"/"completions.csv").exists(), m
    assert (out/"grpo-s0"/"train_log.csv").exists()  # only the trained method has a training log


def test_smoke_visual_pairs_are_designed_lookalikes():
    "Every smoke 'visual' pair shows a model species and its designed mimic (SynthTaxa's world.lookalikes), from different orders."
    from hvr_nbs.core import get_profile
    from hvr_nbs.synthetic import make_world
    from hvr_nbs.taxonrl import taxonrl_pairs
    prof = get_profile("smoke", eval__n_eval=16)
    designed = {frozenset(p) for p in make_world(prof).lookalikes}
    assert designed, "the smoke world draws look-alike pairs"
    data = taxonrl_pairs(prof, seed=0)
    for split, d in data.items():
        rows = list(zip(d["stratum"], d["species1"], d["species2"], d["order1"], d["order2"], d["label"]))
        vis = [r for r in rows if r[0] == "visual"]
        assert len(vis) >= 2, split
        for _, a, b, o1, o2, y in vis: assert frozenset((a, b)) in designed and o1 != o2 and y == 0, (split, a, b)
        # and no designed look-alike pair hides in another stratum
        assert not [r for r in rows if r[0] != "visual" and frozenset(r[1:3]) in designed], split
        assert {frozenset(r[1:3]) for r in vis} == designed  # both look-alike pairs are used


def test_lookalike_pairs_rejects_near_or_missing_lookalikes():
    from hvr_nbs.core import get_profile
    from hvr_nbs.synthetic import make_world
    from hvr_nbs.taxonrl import lookalike_pairs
    w = make_world(get_profile("smoke"))
    imgs = w.dataset(2, seed=1)
    with pytest.raises(ValueError, match="embedding route"): lookalike_pairs(imgs, w.taxonomy, [], 4)
    same_order = [(a, b) for a in w.species for b in w.species if a != b and w.taxonomy.distance(a, b) < len(w.taxonomy.ranks)][:1]
    with pytest.raises(ValueError, match="distant taxa"): lookalike_pairs(imgs, w.taxonomy, same_order, 4)
    out = lookalike_pairs(imgs, w.taxonomy, w.lookalikes, 5)
    assert len(out) == 5 and set(out["stratum"]) == {"visual"}


def test_chimpface_table4_counts_and_attributes(tmp_path):
    "Table 4 (paper profile): the paper's 5,500 ChimpFace pairs shared 70/15/15 and only the age group as attribute."
    import warnings
    from hvr_nbs.core import get_profile
    from hvr_nbs.loaders import make_fixture, load_chimpface
    from hvr_nbs.taxonrl import (identity_pair_counts, identity_pairs, CHIMP_ATTRIBUTES, CHIMPFACE_PAIRS, _identity_task,
                                 identity_spec, identity_prompt)
    assert CHIMPFACE_PAIRS == 5_500 and CHIMP_ATTRIBUTES == ("age_group",)
    assert identity_pair_counts() == {"train": 3850, "validation": 825, "test": 825}
    for total in (7, 100, 5_501): assert sum(identity_pair_counts(total).values()) == total
    assert _identity_task(get_profile("paper")) == (("age_group",), "chimpanzee")
    assert "<age_group>" in identity_prompt(CHIMP_ATTRIBUTES) and "<sex>" not in identity_prompt(CHIMP_ATTRIBUTES)
    spec = identity_spec("taxonrl", CHIMP_ATTRIBUTES, "chimpanzee")
    good = "<think><age_group>Adult; Infant</age_group></think><answer>0.1000</answer>"
    assert spec["reward_funcs"][2]([good], age_group1=["Adult"], age_group2=["Infant"], label=[0]) == [1.0]
    ds = load_chimpface(make_fixture("chimpface", tmp_path/"chimpface", n_classes=4, n_per_class=4)).dataset
    ds = ds.add_column("species", ["Pan troglodytes"] * len(ds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = identity_pairs(ds, attributes=CHIMP_ATTRIBUTES, n_pairs=dict(train=6, validation=4, test=4), splits=(0.5, 0.25, 0.25))
    assert {k: len(v) for k, v in p.items()} == dict(train=6, validation=4, test=4)
    assert "age_group1" in p["test"].column_names and "sex1" not in p["test"].column_names


def test_paper_input_limits_in_the_settings_table():
    "The paper run's prompt-length and image-size limits are the released config's and show in the settings table."
    from hvr_nbs.core import get_profile
    from hvr_nbs.runs import settings_table, check_settings, paper_profile
    from hvr_nbs.taxonrl import PAPER_SETTINGS, input_limits, grpo_overrides
    pp = paper_profile(PAPER_SETTINGS)
    assert input_limits(pp) == dict(max_prompt_length=2048, min_pixels=262_144, max_pixels=4_194_304)
    assert input_limits(get_profile("smoke"))["max_pixels"] is None
    t = check_settings(settings_table(PAPER_SETTINGS, {"paper run": (pp, {"grpo": grpo_overrides(pp), "data": input_limits(pp)})}))
    assert t.loc["max prompt tokens", "paper run"] == 2048 and t.loc["max image pixels", "paper run"] == 4_194_304
    with pytest.raises(AssertionError):  # a run without the limits disagrees with the paper
        check_settings(settings_table(PAPER_SETTINGS, {"paper run": (pp, {"grpo": grpo_overrides(pp), "data": input_limits(get_profile("smoke"))})}))
