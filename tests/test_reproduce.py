"hvr-reproduce on throw-away notebooks: failures don't stop the run, --resume finishes it, the report holds every table, learning check, collapse check and figure, and every training run writes inside --out."
import json, os, re, subprocess, sys
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
    assert "| taxonrl | 60.0 |  | 6.0 |  | 3 |" in md and "mean.1" not in md and not re.search(r"\bnan\b", md + page, re.I)
    assert md.index("demo_learning_check") < md.index("#### demo_table1") < md.index("collapse check of demo_table1")
    assert "> ⚠️ **collapse check of demo_table1: grpo: 'different' is 100% of 6 answers**" in md
    assert "> ✅ **collapse check passed: demo_table2**" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["results/10_demo/demo_curves.png"] and (out/links[0]).exists()
    assert re.findall(r'<img src="([^"]+)"', page) == links and "<figcaption>a line</figcaption>" in page
    assert ">mean Visual</th>" in page and page.count('class="collapse"') == 2


def test_read_table_flattens_two_header_levels(tmp_path):
    import pandas as pd
    from hvr_nbs.reproduce import read_table
    df = pd.DataFrame({"a": [1.0], "b": [2.0]}, index=["x"])
    two = pd.concat({"mean": df, "std": df}, axis=1)
    two.to_csv(tmp_path/"t.csv"); df.to_csv(tmp_path/"s.csv")
    assert list(read_table(tmp_path/"t.csv").columns) == ["mean a", "mean b", "std a", "std b"]
    assert read_table(tmp_path/"t.csv").loc["x", "std b"] == 2.0
    assert read_table(tmp_path/"s.csv").equals(pd.read_csv(tmp_path/"s.csv", index_col=0))


# Reliability drills (issue 17): the runner stopped in the middle of a notebook, two runners on one folder, status files
# written atomically. The fixture notebooks are tiny; the slow one sleeps until the test stops the runner.
import os, signal, time
import psutil

SLOW_NB = ("import os, time\nopen({marks!r}, 'a').write('{n}')\nopen({pid!r}, 'w').write(str(os.getpid()))\n"
           "if not os.path.exists({fast!r}): time.sleep(300)")
TABLE_NB = ("import pandas as pd\nfrom hvr_nbs.core import log_result\nopen({marks!r}, 'a').write('{n}')\n"
            "log_result('table_{n}', pd.DataFrame({{'acc': [0.{n}]}}, index=['ours']), profile=profile)")


def drill_nbs(tmp_path, *kinds):
    "Notebooks 01, 02, ... of the given kinds ('table' or 'slow') in tmp_path/nbs, and the paths they write to."
    d, f = tmp_path/"nbs", dict(marks=str(tmp_path/"marks"), pid=str(tmp_path/"kernel.pid"), fast=str(tmp_path/"fast"))
    d.mkdir()
    for n, kind in enumerate(kinds, 1):
        make_nb(d/f"0{n}_{kind}.ipynb", (SLOW_NB if kind == "slow" else TABLE_NB).format(n=n, **f))
    return d, {k: Path(v) for k, v in f.items()}


def env(tmp_path):
    return {**os.environ, "HVR_CACHE": str(tmp_path/"cache"), "HVR_RESULTS_DIR": str(tmp_path/"stray_results")}


def default_signals():
    for s in (signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)


STARTED = []


@pytest.fixture(autouse=True)
def no_leftover_runners():
    "A drill that fails half-way must not leave a runner and a sleeping kernel behind."
    yield
    from hvr_nbs.reproduce import _kill_tree
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None: _kill_tree(p.pid); p.communicate()


def start(tmp_path, *args):
    "hvr-reproduce in the background, with the default SIGINT and SIGHUP actions even if this test runs with them ignored."
    p = subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env(tmp_path), preexec_fn=default_signals)
    STARTED.append(p)
    return p


def wait_for(cond, what, proc=None, timeout=120):
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None: raise AssertionError(f"runner ended before {what}: {proc.communicate()}")
        if time.time() - t0 > timeout: raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.1)


def status(out):
    p = out/"status.json"
    try: return json.loads(p.read_text()) if p.exists() else {}
    except ValueError: return {}  # never happens with atomic writes; the asserts below would then fail


def wait_running(proc, out, nb, f):
    "Poll until the runner has recorded `nb` as running and its kernel is executing the slow cell; the kernel's pid."
    wait_for(lambda: status(out).get(nb, {}).get("status") == "running" and f["pid"].exists() and f["pid"].read_text(),
             f"{nb} running", proc)
    return int(f["pid"].read_text())


def gone(pid):
    try: return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess: return True


def test_sigkill_mid_notebook_then_resume_runs_exactly_the_rest(tmp_path):
    nbs, f = drill_nbs(tmp_path, "table", "slow", "table")
    out = tmp_path/"run"
    a = start(tmp_path, "--nbs", nbs, "--out", out, "--jobs", "1")                # one at a time: 03 waits for 02
    kernel = wait_running(a, out, "02_slow", f)
    before = status(out)["01_table"]
    kept = {p: p.read_bytes() for p in [out/"01_table.ipynb", *sorted((out/"results"/"01_table").iterdir())]}
    a.kill(); a.communicate(timeout=30)
    wait_for(lambda: gone(kernel), "end of the orphaned kernel", timeout=15)    # the child took its kernel down
    st = status(out)
    assert st["01_table"] == before and st["02_slow"]["status"] == "running" and "03_table" not in st
    assert all(p.read_bytes() == b for p, b in kept.items()) and len(kept) == 3  # notebook, table csv + json
    f["fast"].touch()
    r = subprocess.run([str(BIN), "--nbs", nbs, "--out", out, "--resume", "--jobs", "1"], capture_output=True, text=True,
                       env=env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "interrupted in the earlier run, running again: 02_slow" in r.stdout + r.stderr
    st = status(out)
    assert st["01_table"] == before and {k: v["status"] for k, v in st.items()} == dict.fromkeys(["01_table", "02_slow", "03_table"], "ok")
    assert f["marks"].read_text() == "1223"                                   # 01 and 03 once, 02 again after the kill
    assert all(p.read_bytes() == b for p, b in kept.items())
    md = (out/"report.md").read_text()
    assert md.count("#### table_1") == 1 and md.count("#### table_3") == 1 and "| ours | 0.1 |" in md and "| ours | 0.3 |" in md
    assert not [p for p in out.rglob("*.tmp")]                                 # no half-written status file left


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_ctrl_c_and_hangup_record_interrupted_and_say_how_to_resume(tmp_path, sig):
    nbs, f = drill_nbs(tmp_path, "slow", "table")
    out = tmp_path/"run"; out.mkdir()
    (out/"status.json").write_text(json.dumps({"02_table": {"notebook": "02_table", "status": "ok"}}))  # an older run's
    a = start(tmp_path, "--nbs", nbs, "--out", out, "--jobs", "1")               # a fresh run (no --resume) drops it
    kernel = wait_running(a, out, "01_slow", f)
    a.send_signal(sig)
    _, err = a.communicate(timeout=60)
    assert a.returncode == 128 + sig, err
    assert f"stopped by {sig.name} while 01_slow ran (recorded as interrupted)" in err and f"--out {out} --resume" in err
    assert "Traceback" not in err
    st = status(out)
    assert st["01_slow"]["status"] == "interrupted" and st["01_slow"]["error"] == f"stopped by {sig.name}" and "02_table" not in st
    md = (out/"report.md").read_text()
    assert "| 01_slow | interrupted |" in md and "| 02_table | not reached |" in md
    wait_for(lambda: gone(kernel), "end of the kernel", timeout=15)
    assert not f["marks"].read_text().count("2")                               # 02 never started
    assert not (out/".hvr-reproduce.holder.json").exists()                     # the lock was let go


def test_sigterm_with_two_notebooks_running_stops_and_records_both(tmp_path):
    "--jobs 2: both foundation notebooks running at the signal are killed with their kernels and recorded interrupted."
    d, marks, fast = tmp_path/"nbs", tmp_path/"marks", tmp_path/"fast"
    d.mkdir()
    pids = {n: tmp_path/f"kernel{n}.pid" for n in (1, 2)}
    for n in (1, 2): make_nb(d/f"0{n}_slow.ipynb", SLOW_NB.format(n=n, marks=str(marks), pid=str(pids[n]), fast=str(fast)))
    make_nb(d/"03_table.ipynb", TABLE_NB.format(n=3, marks=str(marks)))
    make_nb(d/"10_table.ipynb", TABLE_NB.format(n=4, marks=str(marks)))
    out = tmp_path/"run"
    a = start(tmp_path, "--nbs", d, "--out", out, "--jobs", "2")
    wait_for(lambda: all(p.exists() and p.read_text() for p in pids.values()), "both slow kernels running", a)
    kernels = [int(p.read_text()) for p in pids.values()]
    a.send_signal(signal.SIGTERM)
    _, err = a.communicate(timeout=60)
    assert a.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM while 01_slow, 02_slow ran (recorded as interrupted)" in err and "Traceback" not in err
    st = status(out)
    assert {k: v["status"] for k, v in st.items()} == {"01_slow": "interrupted", "02_slow": "interrupted"}
    assert all(v["error"] == "stopped by SIGTERM" for v in st.values())
    md = (out/"report.md").read_text()
    assert all(f"| {nb} | {s} |" in md for nb, s in [("01_slow", "interrupted"), ("02_slow", "interrupted"),
                                                      ("03_table", "not reached"), ("10_table", "not reached")])
    for k in kernels: wait_for(lambda: gone(k), f"end of kernel {k}", timeout=15)
    assert sorted(marks.read_text()) == ["1", "2"]                             # 03 and 10 never started
    run = json.loads((out/"run.json").read_text())
    assert run["ended"] == "interrupted" and run["jobs"] == 2 and run["elapsed_s"] > 0


PARALLEL_NB = "import os, time, json\njson.dump(os.environ.get('OMP_NUM_THREADS'), open('omp_{name}.json', 'w'))\ntime.sleep(3)"


def test_jobs_2_runs_foundation_notebooks_side_by_side_and_paper_notebooks_after(tmp_path):
    "The one-at-a-time order (--jobs 1) is checked by the drills above and by the notebook's own example."
    d = tmp_path/"nbs"; d.mkdir()
    for n in ("00_a", "01_b", "10_c"): make_nb(d/f"{n}.ipynb", PARALLEL_NB.format(name=n))
    out = tmp_path/"run"
    r = run("--nbs", d, "--out", out, "--jobs", 2)
    assert r.returncode == 0, r.stderr
    t = {k: (v["started"], v["finished"]) for k, v in json.loads((out/"status.json").read_text()).items()}  # ISO strings sort as times
    assert t["01_b"][0] < t["00_a"][1] and t["00_a"][0] < t["01_b"][1], t          # side by side
    assert t["10_c"][0] >= max(t["00_a"][1], t["01_b"][1]), t                        # the paper notebook after both
    run_rec = json.loads((out/"run.json").read_text())
    assert run_rec["jobs"] == 2 and run_rec["ended"] == "finished" and "up to 2 at a time" in (out/"report.md").read_text()
    from hvr_nbs.reproduce import foundation_threads                              # side by side: the cores shared out
    omp = {n: json.loads((d/f"omp_{n}.json").read_text()) for n in ("00_a", "01_b", "10_c")}
    mine = os.environ.get("OMP_NUM_THREADS")                                       # a value set by the user is kept
    assert omp == {"00_a": mine or str(foundation_threads(2)), "01_b": mine or str(foundation_threads(2)), "10_c": mine}, omp


def test_second_runner_on_the_same_folder_refuses_and_a_killed_one_does_not_block(tmp_path):
    nbs, f = drill_nbs(tmp_path, "slow")
    out = tmp_path/"run"
    a = start(tmp_path, "--nbs", nbs, "--out", out)
    kernel = wait_running(a, out, "01_slow", f)
    mine = ["status.json", "manifest.json", ".hvr-reproduce.holder.json"]
    files = lambda: sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    snap = files(), {n: (out/n).read_bytes() for n in mine}
    b = subprocess.run([str(BIN), "--nbs", nbs, "--out", out, "--resume"], capture_output=True, text=True, env=env(tmp_path), timeout=60)
    assert b.returncode == 2 and "Traceback" not in b.stderr, b.stderr
    assert f"another hvr-reproduce is writing to {out} (pid {a.pid} on " in b.stderr and str(out/".hvr-reproduce.lock") in b.stderr
    assert (files(), {n: (out/n).read_bytes() for n in mine}) == snap           # nothing written, nothing overwritten
    assert a.poll() is None and status(out)["01_slow"]["status"] == "running"  # the first run goes on
    a.kill(); a.communicate(timeout=30)
    wait_for(lambda: gone(kernel), "end of the orphaned kernel", timeout=15)
    f["fast"].touch()
    c = subprocess.run([str(BIN), "--nbs", nbs, "--out", out, "--resume"], capture_output=True, text=True, env=env(tmp_path), timeout=300)
    assert c.returncode == 0, c.stderr                                       # the dead runner's lock went with it
    assert status(out)["01_slow"]["status"] == "ok"


def test_corrupt_status_file_is_named_and_nothing_is_written(tmp_path):
    nbs, f = drill_nbs(tmp_path, "table")
    out = tmp_path/"run"; out.mkdir()
    (out/"status.json").write_text('{"01_table": {"notebook": "01_table", "sta')
    r = run("--nbs", nbs, "--out", out, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"The status file {out/'status.json'} is corrupt" in r.stderr
    assert (out/"status.json").read_text() == '{"01_table": {"notebook": "01_table", "sta'
    assert not (out/"manifest.json").exists() and not f["marks"].exists()


WRITER = """
import sys, itertools
from hvr_nbs.reproduce import _write_json
for i in itertools.count():
    _write_json(sys.argv[1], {"n": i, "pad": list(range(200_000))})
    if i == 0: print("first", flush=True)
"""


def test_status_writes_survive_sigkill(tmp_path):
    "SIGKILL a process that rewrites a large status file in a loop: whenever it dies, the file is whole."
    p = tmp_path/"status.json"
    for delay in [0.05, 0.13, 0.21, 0.34, 0.55]:
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(p)], stdout=subprocess.PIPE, text=True)
        assert w.stdout.readline() == "first\n"
        time.sleep(delay); w.kill(); w.wait(); w.stdout.close()
        rec = json.loads(p.read_text())
        assert rec["pad"][-1] == 199_999 and rec["n"] >= 0


RUNS_NB = """
import os, json
import pandas as pd
from hvr_nbs.core import run_dir, log_result
json.dump({k: os.environ.get(k) for k in ("HVR_RUNS", "HVR_RESULTS_DIR")}, open("env.json", "w"))
(run_dir("demo-grpo", profile) / "manifest.json").write_text("{}")
log_result("runs_table", pd.DataFrame({"acc": [0.5]}, index=["ours"]))
"""


def test_training_runs_and_results_land_in_out_even_with_a_relative_out(tmp_path):
    "The kernel runs in nbs/, so the runner hands it absolute paths inside --out: HVR_RUNS for core.run_dir, HVR_RESULTS_DIR for log_result."
    d = tmp_path/"nbs"; d.mkdir()
    make_nb(d/"01_runs.ipynb", RUNS_NB)
    r = subprocess.run([str(BIN), "--nbs", "nbs", "--out", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**env(tmp_path), "HVR_RUNS": str(tmp_path/"stray_runs")})
    assert r.returncode == 0, r.stderr
    out = (tmp_path/"run").resolve()
    assert json.loads((d/"env.json").read_text()) == {"HVR_RUNS": str(out/"runs"), "HVR_RESULTS_DIR": str(out/"results"/"01_runs")}
    runs = [p.parent.name for p in (out/"runs").glob("*/manifest.json")]
    assert len(runs) == 1 and runs[0].startswith("demo-grpo-smoke-s0-"), runs
    assert not (tmp_path/"stray_runs").exists() and not (tmp_path/"cache"/"runs").exists()  # nothing in the cache or elsewhere
    assert not (d/"run").exists() and "| ours | 0.5 |" in (out/"report.md").read_text()       # results not under nbs/
