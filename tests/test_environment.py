"The declared environment is consistent: settings.ini, environment.yml, README and CI agree."
import configparser, shlex, re
from pathlib import Path
import yaml

ROOT = Path(__file__).resolve().parents[1]

def _settings():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT/"settings.ini")
    return cfg["DEFAULT"]

def test_environment_yml_matches_settings():
    s = _settings()
    declared = set(shlex.split(s["requirements"])) | set(s["dev_requirements"].split())
    env = yaml.safe_load((ROOT/"environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) == declared, f"only in settings.ini: {declared - set(pip)}; only in environment.yml: {set(pip) - declared}"
    assert "python=3.11" in env["dependencies"]

def test_exact_pins_for_moving_apis():
    reqs = {re.split(r"[=<>]", r)[0]: r for r in shlex.split(_settings()["requirements"])}
    for name in ("torch", "torchvision", "transformers", "trl", "nbdev"):
        assert "==" in reqs[name], f"{name} must be pinned exactly, got {reqs[name]!r}"

def test_nbdev_settings_keep_papermill_tags():
    s = _settings()
    assert s["allowed_cell_metadata_keys"].split() == ["tags"]
    assert s["tst_flags"].split() == ["slow", "gpu"]

def test_ci_runs_the_readme_test_command():
    readme = (ROOT/"README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = next(b.strip() for b in blocks if "nbdev_test" in b)
    ci = (ROOT/".ci/run").read_text()
    assert test_cmd in ci.splitlines(), f"{test_cmd!r} is not a line of .ci/run"

def test_package_imports_and_exposes_version():
    import hvr_nbs, hvr_nbs.core, hvr_nbs.reproduce
    assert hvr_nbs.__version__ == _settings()["version"]

def test_readme_and_settings_name_only_notebooks_that_exist():
    named = set(re.findall(r"nbs/(\d\d[a-z]?_[a-z0-9_]+)\.ipynb", (ROOT/"README.md").read_text()))
    missing = sorted(n for n in named if not (ROOT/"nbs"/f"{n}.ipynb").exists())
    assert not missing, f"README names notebooks that do not exist: {missing}"
    nb = _settings().get("readme_nb")
    assert nb is None or (ROOT/"nbs"/nb).exists(), f"settings.ini names a missing readme notebook {nb!r}"

def test_paper_modules_share_one_interface():
    import importlib
    for name in ("taxonrl", "visual_rft", "fine_r1", "vl_taxon", "tara"):
        m = importlib.import_module(f"hvr_nbs.{name}")
        for attr in ("PAPER_SETTINGS", "run_method", "run_experiment", "main"):
            assert hasattr(m, attr), f"hvr_nbs.{name} lacks {attr}"
