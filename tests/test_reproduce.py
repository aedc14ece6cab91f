"hvr-reproduce on throw-away notebooks: failures don't stop the run, --resume finishes it, the report holds every table."
import json, subprocess, sys
from pathlib import Path
import nbformat, pytest

BIN = Path(sys.executable).parent/"hvr-reproduce"

def make_nb(path, *cells, kernelspec=True):
    nb = nbformat.v4.new_notebook()
    if kernelspec: nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell("profile = 'smoke'\nwho = 'nobody'"); p.metadata["tags"] = ["parameters"]
    nb.cells = [p] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))

def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=600)

@pytest.fixture
def nbs(tmp_path):
    d = tmp_path/"nbs"; d.mkdir()
    make_nb(d/"01_table.ipynb", "import pandas as pd\nfrom hvr_nbs.core import log_result",
            "log_result('acc_table', pd.DataFrame({'acc': [0.25]}, index=[who]), reference=pd.DataFrame({'acc': [0.9]}, index=['paper']),"
            " reference_source='Paper, Table 1', profile=profile)")
    make_nb(d/"02_fails.ipynb", f"import os\nassert os.path.exists({str(tmp_path/'fixed')!r}), 'not fixed yet'")
    make_nb(d/"03_after.ipynb", "open('after_ran.txt', 'a').write('x')", kernelspec=False)  # no metadata, as jupytext writes it
    return d

def test_failure_does_not_stop_the_run_and_resume_finishes(nbs, tmp_path):
    out = tmp_path/"run"
    r = run("--nbs", nbs, "--out", out, "-p", "who", "ours")
    assert r.returncode == 1, r.stderr
    status = json.loads((out/"status.json").read_text())
    assert {k: v["status"] for k, v in status.items()} == {"01_table": "ok", "02_fails": "failed", "03_after": "ok"}
    assert "not fixed yet" in status["02_fails"]["error"]
    assert (out/"03_after.ipynb").exists() and (out/"02_fails.ipynb").exists()
    report = (out/"report.md").read_text()
    assert "| ours | 0.25 |" in report and "| paper | 0.9 |" in report and "Paper, Table 1" in report
    assert "02_fails failed" in report and (out/"report.html").exists() and (out/"manifest.json").exists()
    first_ok = status["01_table"]["finished"]
    (tmp_path/"fixed").touch()
    r2 = run("--nbs", nbs, "--out", out, "--resume", "-p", "who", "ours")
    assert r2.returncode == 0, r2.stderr
    status2 = json.loads((out/"status.json").read_text())
    assert all(v["status"] == "ok" for v in status2.values())
    assert status2["01_table"]["finished"] == first_ok            # completed notebook skipped
    assert (nbs/"after_ran.txt").read_text() == "x"               # ...and 03 was not run again

def test_unknown_profile_and_missing_data_root(nbs, tmp_path):
    r = run("--nbs", nbs, "--profile", "huge")
    assert r.returncode != 0 and "invalid choice" in r.stderr
    (nbs/"10_taxonrl.ipynb").write_text((nbs/"03_after.ipynb").read_text())
    r = run("--nbs", nbs, "--profile", "paper", "--only", "10", "--out", tmp_path/"p")
    assert r.returncode == 2 and "--data-root" in r.stderr and "birds_to_words" in r.stderr

def test_every_notebook_names_its_kernel():
    "papermill and JupyterLab need the kernel and language in the notebook's metadata."
    nbs_dir = Path(__file__).resolve().parent.parent/"nbs"
    for p in sorted(nbs_dir.glob("*.ipynb")):
        ks = json.loads(p.read_text())["metadata"].get("kernelspec", {})
        assert ks.get("name") == "python3" and ks.get("language") == "python", p.name
