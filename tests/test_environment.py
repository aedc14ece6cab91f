"The declared environment is consistent: settings.ini (ranges), environment.yml (the lock), README and CI agree."
import configparser, shlex, re, subprocess
from importlib import metadata
from pathlib import Path
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

def _settings():
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT/"settings.ini")
    return cfg["DEFAULT"]

EXTRAS = ("notebooks", "clip", "dev")

def _declared():
    "settings.ini's requirements and extras: {distribution name: Requirement}."
    s = _settings(); out = {}
    for key in ("requirements", *(f"{e}_requirements" for e in EXTRAS)):
        for r in map(Requirement, shlex.split(s.get(key, ""))):
            assert canonicalize_name(r.name) not in out, f"{r.name} is declared twice in settings.ini"
            out[canonicalize_name(r.name)] = r
    return out

def _lock():
    "environment.yml's pip entries: {distribution name: exact version}."
    env = yaml.safe_load((ROOT/"environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    out = {}
    for line in pip:
        r = Requirement(line)
        spec, = r.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"environment.yml must pin exact versions, got {line!r}"
        out[canonicalize_name(r.name)] = spec.version
    return out

def test_environment_yml_matches_settings():
    "environment.yml is the lock: the same packages as settings.ini (extras included), each pin inside its range."
    declared, lock = _declared(), _lock()
    assert set(lock) == set(declared), (f"only in settings.ini: {sorted(set(declared) - set(lock))}; "
                                        f"only in environment.yml: {sorted(set(lock) - set(declared))}")
    outside = {n: (v, str(declared[n].specifier)) for n, v in lock.items() if not declared[n].specifier.contains(v, prereleases=True)}
    assert not outside, f"lock pins outside settings.ini's ranges: {outside}"

def test_settings_give_ranges_not_pins():
    "A library's requirements are ranges: a floor and a cap (next major), never an exact pin; the lock holds the pins."
    for name, r in _declared().items():
        ops = {sp.operator for sp in r.specifier}
        assert ops == {">=", "<"}, f"{name}: want '>=floor,<cap' in settings.ini, got {str(r.specifier)!r}"

def test_tooling_is_in_extras():
    "The notebook tooling and open_clip are extras, not requirements of `pip install hvr_nbs`."
    core = {canonicalize_name(Requirement(r).name) for r in shlex.split(_settings()["requirements"])}
    for name in ("jupyterlab", "papermill", "ipykernel", "nbdev", "execnb", "ghapi", "open-clip-torch", "pytest", "hypothesis"):
        assert name not in core, f"{name} belongs in an extra, not in requirements"

def test_ci_setup_installs_the_lock():
    "`.ci/setup` installs every extra under constraints made from environment.yml's pins, and nothing else."
    setup = (ROOT/".ci/setup").read_text()
    assert '-e ".[notebooks,clip,dev]" -c "$LOCK"' in setup
    sed = next(l for l in setup.splitlines() if l.startswith("sed ") and "environment.yml" in l).split(" > ")[0]
    # the README's by-hand command for the same install must give the same pins
    grep = next(l for l in (ROOT/"README.md").read_text().splitlines() if "environment.yml > " in l).split(" > ")[0]
    for cmd in (sed, grep):
        pins = subprocess.run(["bash", "-c", cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        assert {canonicalize_name(p.split("==")[0]): p.split("==")[1] for p in pins} == _lock(), cmd

def test_installed_environment_is_the_lock():
    "The environment running the tests holds exactly environment.yml's versions (what `.ci/setup` installs)."
    off = {}
    for name, want in _lock().items():
        try: got = metadata.version(name)
        except metadata.PackageNotFoundError: got = None
        if got != want: off[name] = (got, want)
    assert not off, f"installed vs lock: {off}; run `bash .ci/setup`"

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
