"hvr_nbs as a library: the light modules import light, and the built wheel works in a fresh venv with only their needs."
import configparser, json, shlex, shutil, subprocess, sys, zipfile
from email.parser import Parser
from pathlib import Path
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LIGHT = ("hvr_nbs.rewards", "hvr_nbs.metrics", "hvr_nbs.taxonomy")
# What the light modules must never pull in: the training stack and the notebook tooling.
HEAVY = ("torch", "torchvision", "transformers", "trl", "datasets", "peft", "accelerate", "open_clip", "tokenizers",
         "safetensors", "huggingface_hub", "sklearn", "scipy", "matplotlib", "seaborn", "nbdev", "IPython")
# What they truly need: numpy and pandas (metrics, taxonomy) and fastcore (taxonomy's @patch).
LIGHT_NEEDS = ("numpy", "pandas", "fastcore")

def _settings():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT/"settings.ini")
    return cfg["DEFAULT"]

def _reqs(key): return [Requirement(r) for r in shlex.split(_settings().get(key, ""))]

def _run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout

def _loaded_heavy(python, cwd):
    code = (f"import sys, json; import {', '.join(LIGHT)}; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    return json.loads(_run([python, "-c", code], cwd=cwd).strip().splitlines()[-1])

def test_light_modules_import_without_heavy_dependencies():
    assert _loaded_heavy(sys.executable, cwd=ROOT) == []

# Examples from the notebooks (nbs/05_rewards, nbs/06_metrics, nbs/01_taxonomy), run inside the fresh venv.
EXAMPLES = r'''
import json, math, sys
import hvr_nbs, hvr_nbs.rewards as R, hvr_nbs.metrics as M
from hvr_nbs.taxonomy import Taxonomy
bk = """<think>
1. Order Analysis: both are in the same order. <order>Coraciiformes; Coraciiformes</order>
2. Family Analysis: in different families. <family>Meropidae; Alcedinidae</family>
</think>
<answer>0.0210</answer>"""
cols = dict(label=[0], order1=["Coraciiformes"], family1=["Meropidae"], genus1=["Merops"],
            order2=["Coraciiformes"], family2=["Alcedinidae"], genus2=["Alcedo"])
outs = ["<think>swept wings, four engines</think><answer>Boeing 737-200</answer>",
        "<think>...</think><answer>boeing 737</answer>", "<think>...</think><answer>Airbus A320 or Boeing 737</answer>",
        "<answer>Boeing 737</answer>", "<think>...</think><answer>Boeing 747</answer>"]
truths = [["Rosales", "Rosaceae", "Heteromeles", "Heteromeles arbutifolia"], ["Rosales", "Rosaceae", "Prunus", "Prunus persica"],
          ["Fagales", "Fagaceae", "Quercus", "Quercus alba"]]
preds = [["rosales", "Rosaceae", "Heteromeles", "Heteromeles  arbutifolia"], ["Sapindales", "Rosaceae", "Prunus", "Prunus persica"],
         ["Fagales", "Fagaceae", None, "Quercus rubra"]]
va = M.verification_accuracy([0.9, 0.2, "<answer>0.7000</answer>", "garbage", 0.5, float("nan")], [1, 0, 0, 1, 1, 0],
                             ["same_species", "same_genus", "same_genus", "same_species", "visual", "visual"])
cub = Taxonomy.packaged("cub200")
print(json.dumps(dict(
    hvr_nbs_file=hvr_nbs.__file__,
    taxonrl_reward=R.taxonrl_reward([bk], **cols), taxonrl_expected=[0.2 + 0.4 * (1 + math.log(1 - 0.021)) + 0.4],
    fine_r1_reward=R.fine_r1_reward(outs, answer=["Boeing 737"] * 5),
    hca=M.hca(preds, truths), spor=M.spor(preds, truths),
    per_level=M.per_level_accuracy(preds, truths, ["order", "family", "genus", "species"]),
    verification_all=float(va.loc["all", "accuracy"]), verification_n=int(va.loc["all", "n"]),
    cub_len=len(cub), cub_path=list(cub.path("Black-footed Albatross")),
    cub_stratum=cub.stratum("Black-footed Albatross", "Laysan Albatross"),
    versions={n: __import__("importlib.metadata").metadata.version(n) for n in ("numpy", "pandas", "fastcore")},
    heavy_importable=sorted(m for m in sys.argv[1:] if __import__("importlib.util").util.find_spec(m) is not None),
)))
'''

def _floor(req):
    "The lowest version a `>=` range admits."
    lows = [s.version for s in req.specifier if s.operator == ">="]
    assert len(lows) == 1, f"{req} needs one >= floor"
    return lows[0]

def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    # Build the wheel from a copy of the sources (the repository gets no build/ folder).
    src = tmp_path/"src"; src.mkdir()
    for f in ("setup.py", "settings.ini", "README.md", "MANIFEST.in"): shutil.copy(ROOT/f, src/f)
    shutil.copytree(ROOT/"hvr_nbs", src/"hvr_nbs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path/"dist", src])
    wheel, = (tmp_path/"dist").glob("hvr_nbs-*.whl")

    # Its metadata: the ranges of settings.ini, extras for notebooks, clip and dev, no exact pins; the taxonomies inside.
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert sorted(meta.get_all("Provides-Extra")) == ["clip", "dev", "notebooks"]
    declared = {(r.name, str(r.specifier), None) for r in _reqs("requirements")}
    for extra in ("notebooks", "clip", "dev"):
        declared |= {(r.name, str(r.specifier), extra) for r in _reqs(f"{extra}_requirements")}
    got = set()
    for line in meta.get_all("Requires-Dist"):
        r = Requirement(line)
        extra = next((e for e in ("notebooks", "clip", "dev") if r.marker and r.marker.evaluate({"extra": e})), None)
        got.add((r.name, str(r.specifier), extra))
    assert got == declared, f"only in the wheel: {got - declared}; only in settings.ini: {declared - got}"
    pinned = [n for n, spec, _ in got if "==" in spec or "<" not in spec]
    assert not pinned, f"the wheel must give ranges with a cap, not exact pins or open ends: {pinned}"
    assert {"hvr_nbs/taxonomies/hierarchy_CUB200.json", "hvr_nbs/taxonomies/LICENSE"} <= set(names)

    # A fresh venv (no system site-packages) with only what the light modules need, at the floors settings.ini declares.
    venv = tmp_path/"venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv/"bin"/"python"
    floors = {r.name: _floor(r) for r in _reqs("requirements") if r.name in LIGHT_NEEDS}
    assert sorted(floors) == sorted(LIGHT_NEEDS)
    _run([py, "-m", "pip", "install", "-q", *[f"{n}=={v}" for n, v in floors.items()]], cwd=tmp_path)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", wheel], cwd=tmp_path)

    assert _loaded_heavy(py, cwd=tmp_path) == []
    (tmp_path/"examples.py").write_text(EXAMPLES)
    out = json.loads(_run([py, "examples.py", *HEAVY], cwd=tmp_path).strip().splitlines()[-1])
    assert Path(out["hvr_nbs_file"]).is_relative_to(venv), out["hvr_nbs_file"]   # the wheel, not the checkout
    assert out["versions"] == floors, "the light modules ran on other versions than settings.ini's floors"
    assert out["heavy_importable"] == [], f"the fresh venv should hold none of {out['heavy_importable']}"
    assert abs(out["taxonrl_reward"][0] - out["taxonrl_expected"][0]) < 1e-9
    assert [round(x, 9) for x in out["fine_r1_reward"]] == [1.0, 1.0, 0.1, 0.9, 0.1]
    assert abs(out["hca"] - 1 / 3) < 1e-12
    assert abs(out["spor"] - (4 / 4 + 3 / 4 + 2 / 4) / 3) < 1e-12
    assert out["per_level"] == {"order": 2 / 3, "family": 1.0, "genus": 2 / 3, "species": 2 / 3}
    assert abs(out["verification_all"] - 3 / 6) < 1e-12 and out["verification_n"] == 6
    assert out["cub_len"] == 200
    assert out["cub_path"] == ["Procellariiformes", "Diomedeidae", "Phoebastria", "Black-footed Albatross"]
    assert out["cub_stratum"] == "same_genus"
