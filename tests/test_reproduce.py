"hvr-reproduce on throw-away notebooks: failures don't stop the run, --resume finishes it, the report holds every table, learning check, collapse check and figure."
import json, re, subprocess, sys
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


RESULTS_NB = """
import pandas as pd, matplotlib.pyplot as plt
from hvr_nbs.core import log_result
from hvr_nbs.evaluation import learning_check, collapse_check, report_collapse, log_figure
df = pd.DataFrame({"Visual": [50.0, 60.0], "Other": [10.0, None]}, index=pd.Index(["grpo", "taxonrl"], name="method"))
t = pd.concat({"mean": df, "std": df / 10}, axis=1)
t[("seeds", "")] = 3
log_result("demo_table1", t, caption="two header levels")
rec = pd.DataFrame([dict(method="taxonrl", metric="sampled", seed=s, start_value=0.4, value=0.4 + d) for s, d in enumerate([.05, .06, .04])])
log_result("demo_learning_check", learning_check(rec))
pred = pd.DataFrame(dict(method=["grpo"] * 6 + ["base"] * 6, item=list(range(6)) * 2, answer=["different"] * 6 + ["same", "different"] * 3))
report_collapse(collapse_check(pred, item_col="item"), "demo_table1")
report_collapse(collapse_check(pred[pred.method == "base"], item_col="item"), "demo_table2")
fig, ax = plt.subplots(); ax.plot([0, 1], [0, 1])
log_figure("demo_curves", fig, caption="a line")
"""


def test_report_renders_two_level_tables_checks_and_figures(tmp_path):
    d = tmp_path/"nbs"; d.mkdir()
    make_nb(d/"10_demo.ipynb", RESULTS_NB)
    out = tmp_path/"run"
    r = run("--nbs", d, "--out", out)
    assert r.returncode == 0, r.stderr
    md, page = (out/"report.md").read_text(), (out/"report.html").read_text()
    assert "| method | mean Visual | mean Other | std Visual | std Other | seeds |" in md
    assert "| taxonrl | 60 |  | 6 |  | 3 |" in md and "mean.1" not in md and not re.search(r"\bnan\b", md + page, re.I)
    assert md.index("demo_learning_check") < md.index("#### demo_table1") < md.index("collapse check of demo_table1")
    assert "> ⚠️ **collapse check of demo_table1: grpo: 'different' is 100% of 6 answers**" in md
    assert "> ✅ **collapse check passed: demo_table2**" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["results/10_demo/demo_curves.png"] and (out/links[0]).exists()
    assert re.findall(r'<img src="([^"]+)"', page) == links and "<figcaption>a line</figcaption>" in page
    assert "<th>mean Visual</th>" in page and page.count('class="collapse"') == 2


def test_read_table_flattens_two_header_levels(tmp_path):
    import pandas as pd
    from hvr_nbs.reproduce import read_table
    df = pd.DataFrame({"a": [1.0], "b": [2.0]}, index=["x"])
    two = pd.concat({"mean": df, "std": df}, axis=1)
    two.to_csv(tmp_path/"t.csv"); df.to_csv(tmp_path/"s.csv")
    assert list(read_table(tmp_path/"t.csv").columns) == ["mean a", "mean b", "std a", "std b"]
    assert read_table(tmp_path/"t.csv").loc["x", "std b"] == 2.0
    assert read_table(tmp_path/"s.csv").equals(pd.read_csv(tmp_path/"s.csv", index_col=0))
