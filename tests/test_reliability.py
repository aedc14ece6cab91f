"""Reliability drills (issue 17): the same seed gives the same tables, a corrupt cache entry is rebuilt, bad inputs
through the public entry points stop with an error that names the problem, leaving nothing half-written, and a paper
command line killed during GRPO resumes from its last checkpoint."""
import json, os, shutil, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

from hvr_nbs.core import get_profile, log_result, TEST_OVERRIDES


def _listing(root):
    "Every path under `root` (relative), to check that a failed call wrote nothing."
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


# ----------------------------------------------------------------------------------------------------------------------
# Determinism: one paper's short run (TaxonRL GRPO at the nbdev_test sizes), twice with the same seed, once with another

@pytest.fixture(scope="module")
def taxonrl_runs(tmp_path_factory):
    """TaxonRL `grpo` runs on CPU at the test sizes: (seed 0, data 0) twice, each with its data drawn afresh; (seed 1, data 0),
    where only the run's own randomness (GRPO rollouts, training, sampled evaluation) differs; and (seed 1, data 1)."""
    import torch
    from hvr_nbs.training import warm_start_base
    from hvr_nbs import taxonrl
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        prof = get_profile("smoke", **TEST_OVERRIDES)
        base = warm_start_base(prof, steps=40, vision_steps=20).path  # the nbdev_test warm start (cached after its first build)
        out = tmp_path_factory.mktemp("taxonrl")
        def run(seed, data_seed, name):
            data = taxonrl.taxonrl_pairs(prof, seed=data_seed, n_pairs=8)
            return taxonrl.run_method("grpo", data, base, prof, seed=seed, steps=1, n_eval=4, out_dir=out/name)
        return dict(a=run(0, 0, "a"), b=run(0, 0, "b"), c=run(1, 0, "c"), d=run(1, 1, "d"))
    finally: torch.set_num_threads(threads)


def _tables(r):
    "What a run reports: per-pair results, the accuracy table, the metrics, and the training log without wall-clock columns."
    from hvr_nbs.taxonrl import accuracy_table
    log = r.log.drop(columns=[c for c in r.log.columns if c.endswith("_time") or "runtime" in c or "per_second" in c])
    return dict(results=r.results.drop(columns="seed"), table1=accuracy_table(r.results.assign(seed=0)),
                metrics=pd.Series(r.metrics).to_frame("value"), log=log)


def test_same_seed_gives_the_same_tables_cell_by_cell(taxonrl_runs):
    a, b = _tables(taxonrl_runs["a"]), _tables(taxonrl_runs["b"])
    assert len(a["results"]) == 4 and len(a["log"].query("step > 0")) == 1 and len(a["log"].columns) > 10  # one GRPO step
    assert any(c.startswith("held-out/") for c in a["log"].columns)  # and the held-out probe's values (also at step 0)
    for k in a: pd.testing.assert_frame_equal(a[k], b[k], check_exact=True, obj=k)
    written = [pd.read_csv(taxonrl_runs[x].run_dir/"completions.csv") for x in "ab"]  # the files, too
    pd.testing.assert_frame_equal(*written, check_exact=True)


def test_different_seed_differs(taxonrl_runs):
    a, c, d = (_tables(taxonrl_runs[k]) for k in "acd")
    assert not a["results"].equals(d["results"])  # another seed: other pairs, other results
    rollouts = ["num_tokens", "completions/mean_length", "entropy"]
    assert not a["log"][rollouts].equals(c["log"][rollouts])  # same pairs, another seed: other GRPO rollouts


# ----------------------------------------------------------------------------------------------------------------------
# The cache: a corrupt artifact is named and rebuilt (a real one: the tiny VLM that `load_vlm('tiny-...')` builds)

def test_truncated_cached_checkpoint_is_named_and_rebuilt(tmp_path, monkeypatch):
    from hvr_nbs.models import resolve_checkpoint, load_vlm, safetensors_problems
    monkeypatch.setenv("HVR_CACHE", str(tmp_path/"cache"))
    d = resolve_checkpoint("tiny-qwen2.5-vl")
    w = d/"model.safetensors"; w.write_bytes(w.read_bytes()[:len(w.read_bytes()) // 2])
    with pytest.warns(RuntimeWarning, match=r"model\.safetensors is truncated"):
        again = resolve_checkpoint("tiny-qwen2.5-vl")
    assert again == d and safetensors_problems(d) == {} and (d/"DONE").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert resolve_checkpoint("tiny-qwen2.5-vl") == d  # intact: a plain hit
    model, _ = load_vlm(d, device="cpu")
    assert sum(p.numel() for p in model.parameters()) > 0


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs through the public entry points

@pytest.mark.parametrize("name,loader,missing", [("cub", "load_cub", "image_class_labels.txt"), ("inat21", "load_inat21", "val.json")])
def test_missing_annotation_file_is_named(tmp_path, name, loader, missing):
    import hvr_nbs.loaders as L
    root = L.make_fixture(name, tmp_path/name, n_classes=2, n_per_class=2)
    (root/missing).unlink()
    before = _listing(tmp_path)
    with pytest.raises(FileNotFoundError, match=missing.replace(".", r"\.")):
        getattr(L, loader)(root)
    assert _listing(tmp_path) == before


def _truncated_cub(tmp_path, cut):
    from hvr_nbs.loaders import make_fixture
    root = make_fixture("cub", tmp_path/"cub", n_classes=2, n_per_class=2)
    img = sorted((root/"images").rglob("*.jpg"))[0]
    b = img.read_bytes(); img.write_bytes(b[:len(b) - cut(len(b))])
    return root, img


def test_truncated_image_is_named(tmp_path):
    from hvr_nbs.loaders import load_cub, CorruptImageError
    root, img = _truncated_cub(tmp_path, lambda n: n // 2)
    with pytest.raises(CorruptImageError, match=img.name):
        load_cub(root)


def test_slightly_truncated_image_is_named_by_the_decode_check(tmp_path):
    from hvr_nbs.loaders import load_cub, CorruptImageError
    root, img = _truncated_cub(tmp_path, lambda n: 10)
    with pytest.raises(CorruptImageError, match=f"{img.name}.*truncated"):
        load_cub(root, check="decode")


def test_slightly_truncated_image_is_named_by_the_default_check(tmp_path):
    from hvr_nbs.loaders import load_cub, CorruptImageError
    root, img = _truncated_cub(tmp_path, lambda n: 10)
    with pytest.raises(CorruptImageError, match=img.name):
        load_cub(root)


@pytest.mark.parametrize("rows,named", [
    ([("O1", "F1", "G1", "Aus bus"), ("O1", "F2", "G2", "Aus bus")], "'Aus bus' has two different paths"),
    ([("O1", "F1", "G1", "Aus bus"), ("O1", "F2", "G1", "Aus cus")], "genus 'G1' sits under two different family names")])
def test_taxonomy_with_two_parents_is_named(tmp_path, rows, named):
    from hvr_nbs.taxonomy import Taxonomy, TaxonomyError
    f = tmp_path/"taxonomy.csv"
    pd.DataFrame(rows, columns=["order", "family", "genus", "species"]).to_csv(f, index=False)
    with pytest.raises(TaxonomyError, match=named):
        Taxonomy.from_table(f)


def test_taxonomy_json_with_a_species_listed_twice_is_named(tmp_path):
    from hvr_nbs.taxonomy import Taxonomy, TaxonomyError
    f = tmp_path/"taxonomy.json"
    f.write_text('{"Aus bus": ["O1", "F1", "G1"], "Aus bus": ["O1", "F2", "G2"], "Aus cus": ["O1", "F1", "G1"]}')
    with pytest.raises(TaxonomyError, match="Aus bus"):
        Taxonomy.from_json(f, ["order", "family", "genus", "species"])


@pytest.mark.parametrize("df", [pd.DataFrame(), pd.DataFrame(columns=["accuracy"])], ids=["nothing", "no rows"])
def test_empty_results_table_is_refused_and_nothing_written(tmp_path, monkeypatch, df):
    monkeypatch.setenv("HVR_RESULTS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="'taxonrl_table1' is empty"):
        log_result("taxonrl_table1", df, reference=pd.DataFrame({"acc": [1.0]}), reference_source="TaxonRL, Table 1")
    assert _listing(tmp_path) == []


def test_checkpoint_folder_without_weights_is_named(tmp_path):
    from hvr_nbs.models import make_tiny_vlm, load_vlm
    d = make_tiny_vlm(tmp_path/"ckpt", vocab_size=512)
    (d/"model.safetensors").unlink()
    before = _listing(tmp_path)
    with pytest.raises(FileNotFoundError, match="has no weights") as e:
        load_vlm(d, device="cpu")
    assert str(d) in str(e.value) and _listing(tmp_path) == before


@pytest.mark.parametrize("over,named", [(dict(train__learnin_rate=1e-4), "did you mean 'train__learning_rate'"),
                                        (dict(trian__grpo_steps=3), "Unknown profile setting 'trian__grpo_steps'"),
                                        (dict(train__grpo_steps="ten"), "'train__grpo_steps' expects int, got 'ten'"),
                                        (dict(train__grpo_steps=2.5), "'train__grpo_steps' expects int, got 2.5"),
                                        (dict(model__lora="maybe"), "'model__lora' expects bool"),
                                        (dict(train__seeds="0,one"), "'train__seeds' expects tuple")])
def test_profile_override_with_unknown_key_or_wrong_type_is_named(over, named):
    with pytest.raises(ValueError, match=named):
        get_profile("smoke", **over)


@pytest.mark.parametrize("kv,named", [("train__grpo_stepz=5", "did you mean 'train__grpo_steps'"),
                                      ("train__grpo_steps=five", "'train__grpo_steps' expects int, got 'five'")])
def test_paper_cli_set_with_unknown_key_or_wrong_type_is_named(tmp_path, kv, named):
    from hvr_nbs.taxonrl import main
    with pytest.raises(ValueError, match=named):
        main(["--profile", "smoke", "--set", kv, "--out", str(tmp_path/"out")])
    assert _listing(tmp_path) == []


def test_reproduce_param_with_unknown_key_is_named(tmp_path):
    import nbformat
    from hvr_nbs.reproduce import reproduce
    nbs = tmp_path/"nbs"; nbs.mkdir()
    nb = nbformat.v4.new_notebook(); nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell("profile = 'smoke'\ngrpo_steps = None"); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, str(nbs/"01_demo.ipynb"))
    with pytest.raises(ValueError, match="train__grpo_stepz"):
        reproduce("smoke", nbs_dir=nbs, out=tmp_path/"run", params={"train__grpo_stepz": "5"})
    assert not (tmp_path/"run").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Training resume: a paper command line killed (SIGKILL) in the middle of GRPO continues from its last checkpoint

def _whole(f):
    "Whether the JSON file `f` exists and reads back (the trainer writes a checkpoint's trainer_state.json last)."
    try: json.loads(Path(f).read_text()); return True
    except (OSError, ValueError): return False


def test_killed_command_line_resumes_grpo_from_its_checkpoint(tmp_path):
    "`python -m hvr_nbs.vl_taxon --save-steps 1 --steps 3` killed once a GRPO checkpoint exists; rerun with --resume: steps 1-3, once each."
    import re, signal, subprocess, sys, time
    env = dict(os.environ, IN_TEST="1", OMP_NUM_THREADS="1", HVR_CACHE=os.environ.get("HVR_CACHE") or str(tmp_path/"cache"))
    out = tmp_path/"run"
    cmd = [sys.executable, "-m", "hvr_nbs.vl_taxon", "--profile", "smoke", "--methods", "vl-taxon", "--steps", "3", "--n-eval", "2",
           "--save-steps", "1", "--out", str(out), "--set", "train__sft_steps=2"]
    grpo = out/"vl-taxon-s0"/"_grpo"
    with open(tmp_path/"first.log", "w") as log:
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            seen, deadline = lambda: any(_whole(grpo/f"checkpoint-{s}"/"trainer_state.json") for s in (1, 2)), time.time() + 900
            while p.poll() is None and time.time() < deadline and not seen(): time.sleep(0.05)
            assert p.poll() is None and seen(), "no GRPO checkpoint while the first run ran:\n" + (tmp_path/"first.log").read_text()[-3000:]
        finally:
            p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and not (out/"predictions.csv").exists()
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    said = re.search(r"vl-taxon seed 0 GRPO: resuming from (\S+)", r.stdout)
    assert said and re.search(r"_grpo/checkpoint-[12]$", said.group(1)), r.stdout[-2000:]
    log = pd.read_csv(out/"vl-taxon-s0"/"train_log.csv")
    g = log[log["phase"] == "grpo"]
    assert g["step"].tolist() == [1, 2, 3]  # the whole run, each step once: the killed run's steps from the checkpoint
    assert g["loss"].notna().all() and np.isfinite(g["loss"]).all()
    m = json.loads((out/"vl-taxon-s0"/"manifest.json").read_text())
    assert m["resumed_from"] == {"grpo": said.group(1)}
    assert not grpo.exists() and (out/"predictions.csv").exists()


def test_resume_without_out_is_named(tmp_path, monkeypatch):
    from hvr_nbs.taxonrl import main
    monkeypatch.setenv("HVR_RUNS", str(tmp_path))
    with pytest.raises(ValueError, match="--resume continues the runs in an --out folder"):
        main(["--profile", "smoke", "--resume"])
    assert _listing(tmp_path) == []
