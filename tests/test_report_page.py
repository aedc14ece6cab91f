"What a person sees: report.html rendered by headless Chromium (figures load, no cell reads NaN), and a paper notebook opened and run through JupyterLab's server on localhost."
import ast, json, os, re, secrets, shutil, socket, subprocess, sys, time, uuid
from html.parser import HTMLParser
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
STATUSES = [{"notebook": "10_demo", "status": "ok", "wall_s": 12.25, "peak_rss_gb": 1.5},
            {"notebook": "11_fails", "status": "failed", "wall_s": 2.0, "peak_rss_gb": None, "error": "RuntimeError: boom"}]


def browser():
    "The first headless-capable browser on PATH, or None."
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def chrome(tmp_path, *args, timeout=120):
    "Run the browser headless with a throw-away profile; its stdout."
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--allow-file-access-from-files", f"--user-data-dir={tmp_path/'chrome-profile'}", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.fixture
def report(tmp_path, monkeypatch):
    "A small run folder made as the notebooks make one (log_result, log_figure), and its report written by write_report."
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt, nbformat, pandas as pd
    from hvr_nbs.core import log_result
    from hvr_nbs.evaluation import log_figure, learning_check
    from hvr_nbs.reproduce import write_report
    out = tmp_path/"run"
    monkeypatch.setenv("HVR_RESULTS_DIR", str(out/"results"/"10_demo"))
    df = pd.DataFrame({"Visual": [50.0, 83.333333], "Other": [10.0, None]}, index=pd.Index(["grpo", "taxonrl"], name="method"))
    two = pd.concat({"mean": df, "std": df / 10}, axis=1)
    two[("seeds", "")] = 3
    log_result("demo_table1", two, caption="Accuracy per stratum (%).", reference=df, reference_source="Paper, Table 1", profile="smoke")
    rec = pd.DataFrame([dict(method="taxonrl", metric="sampled", seed=s, start_value=0.4, value=0.4 + d) for s, d in enumerate([.05, .06, .04])])
    log_result("demo_learning_check", learning_check(rec))
    for name in ("demo_curves", "demo rewards"):  # a space in the name: the link must still resolve
        fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([0, 1, 2], [0, 1, 4]); ax.set_xlabel("step"); ax.set_ylabel("reward")
        log_figure(name, fig, caption=f"{name} <per step>"); plt.close(fig)
    nbformat.write(nbformat.v4.new_notebook(), str(out/"10_demo.ipynb"))  # the executed notebook the runner leaves
    write_report(out, STATUSES, "smoke")
    return out


class Page(HTMLParser):
    "The parts of a page the checks need: image sources, link targets, element ids and the text of every table cell."
    def __init__(self, text):
        super().__init__(); self.imgs, self.hrefs, self.ids, self.cells, self._cell = [], [], set(), [], None
        self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        if tag == "img": self.imgs.append(a.get("src"))
        if tag == "a" and a.get("href"): self.hrefs.append(a["href"])
        if tag in ("td", "th"): self._cell = []
    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None: self.cells.append("".join(self._cell).strip()); self._cell = None
    def handle_data(self, data):
        if self._cell is not None: self._cell.append(data)


def is_png(path):
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
        return im.format == "PNG"


def test_report_page_files_links_and_cells(report):
    "Without a browser: every <img> is a PNG in the run folder, every link resolves, no cell reads NaN or nan."
    from urllib.parse import unquote
    page = Page((report/"report.html").read_text(encoding="utf-8"))
    assert len(page.imgs) == 2 and all(is_png(report/unquote(src)) for src in page.imgs), page.imgs
    for href in page.hrefs:
        if href.startswith("#"): assert href[1:] in page.ids, href
        else: assert (report/unquote(href)).exists(), href
    assert "10_demo.ipynb" in page.hrefs and "#10_demo" in page.hrefs and "#11_fails" in page.hrefs
    assert "83.3" in page.cells and "" in page.cells and not [c for c in page.cells if re.search(r"\bnan\b|\bNone\b", c, re.I)]
    md = (report/"report.md").read_text(encoding="utf-8")
    assert [l for l in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)] == page.imgs and not re.search(r"\bnan\b", md, re.I)


# Runs in the page after it has loaded (images included): what the browser made of every <img> and every table cell.
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth})),
    cells: [...document.querySelectorAll("td, th")].map(c => c.textContent.trim()),
    pairs: [...document.querySelectorAll(".pair")].map(p => p.children.length)});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(browser() is None, reason="no chromium, chromium-browser or google-chrome on PATH (`.ci/setup` installs "
                                               "Debian's chromium where apt-get works)")
def test_report_page_in_headless_chromium(report, tmp_path):
    "Chromium loads report.html: every figure decodes to an image with a width, no rendered cell reads NaN, ours and the paper's side by side."
    page = (report/"report.html").read_text(encoding="utf-8")
    probe = report/"report_probe.html"  # beside report.html, so relative links resolve the same way
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chrome(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the page's load event never fired: " + dom[-1000:]
    import html
    seen = json.loads(html.unescape(m.group(1)))
    assert len(seen["images"]) == 2 and all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert seen["cells"] and not [c for c in seen["cells"] if re.search(r"\bnan\b", c, re.I)]
    assert 2 in seen["pairs"]  # demo_table1: ours and the paper's in one row
    shot = tmp_path/"report.png"
    chrome(tmp_path, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}", (report/"report.html").as_uri())
    from PIL import Image
    with Image.open(shot) as im:
        assert im.size == (1200, 1600) and len(im.convert("L").getcolors(2**16)) > 20  # not a blank page


# JupyterLab: the server a person starts with `jupyter lab nbs/`, on a free localhost port with a random token.
NOTEBOOK = "13_vl_taxon.ipynb"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def import_only(src):
    "Whether a cell's code is nothing but imports (nbdev's `#|` directives are comments)."
    body = ast.parse(src).body
    return bool(body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)


def execute(ws, code, timeout=300):
    "Run `code` in the kernel behind websocket `ws` as JupyterLab does; (execute_reply content, stdout text)."
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                                   "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    reply, idle, out, t0 = None, False, [], time.time()
    while reply is None or not idle:
        assert time.time() - t0 < timeout, f"no reply to {code[:80]!r} after {timeout} s"
        m = json.loads(ws.recv())
        if m.get("parent_header", {}).get("msg_id") != msg_id: continue
        t = m["header"]["msg_type"]
        if t == "execute_reply": reply = m["content"]
        elif t == "stream" and m["content"]["name"] == "stdout": out.append(m["content"]["text"])
        elif t == "status" and m["content"]["execution_state"] == "idle": idle = True
    return reply, "".join(out)


def test_jupyterlab_opens_a_paper_notebook_and_runs_its_first_cells(tmp_path):
    import requests, websocket
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path/"runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path/"config"),
           "JUPYTER_DATA_DIR": str(tmp_path/"data")}  # no user settings or kernels: the kernel is the project's
    log = open(tmp_path/"lab.log", "w")
    lab = subprocess.Popen([str(Path(sys.executable).parent/"jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT/'nbs'}",
                            *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
                           env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}
    try:
        t0 = time.time()
        while True:
            assert lab.poll() is None, f"jupyter lab exited {lab.returncode}: {(tmp_path/'lab.log').read_text()[-2000:]}"
            assert time.time() - t0 < 120, "jupyter lab did not answer in 120 s: " + (tmp_path/"lab.log").read_text()[-2000:]
            try:
                if requests.get(f"{base}/api/status", headers=auth, timeout=5).ok: break
            except requests.ConnectionError: pass
            time.sleep(0.5)
        assert requests.get(f"{base}/api/contents/{NOTEBOOK}", timeout=30).status_code == 403  # the token is required
        r = requests.get(f"{base}/api/contents/{NOTEBOOK}", headers=auth, params={"content": 1}, timeout=60)
        assert r.ok and r.json()["type"] == "notebook", r.text[:500]
        import nbformat
        nb = nbformat.from_dict(r.json()["content"]); nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        params = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
        first = [c.source for c in code[:params] if import_only(c.source)][:3]
        assert len(first) >= 2, "the notebook no longer opens with import cells"
        # what JupyterLab does on opening the notebook: a session for its path, which starts the kernel in nbs/
        s = requests.post(f"{base}/api/sessions", headers=auth, timeout=60,
                          json={"path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}})
        assert s.ok, s.text[:500]
        kernel = s.json()["kernel"]["id"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels?token={token}", timeout=300)
        try:
            for src in first:
                reply, _ = execute(ws, src)
                assert reply["status"] == "ok", f"{src[:200]!r}: {reply.get('ename')}: {reply.get('evalue')}"
            reply, out = execute(ws, "import sys, os, json, hvr_nbs; print(json.dumps([sys.prefix, os.getcwd(), hvr_nbs.__file__]))")
            assert reply["status"] == "ok", reply
            prefix, cwd, pkg = json.loads(out)
            assert Path(prefix) == Path(sys.prefix) and Path(cwd) == ROOT/"nbs" and Path(pkg).is_relative_to(ROOT), (prefix, cwd, pkg)
        finally:
            ws.close()
        assert requests.delete(f"{base}/api/sessions/{s.json()['id']}", headers=auth, timeout=60).status_code == 204
    finally:
        lab.terminate()
        try: lab.wait(30)
        except subprocess.TimeoutExpired:
            from hvr_nbs.reproduce import _kill_tree
            _kill_tree(lab.pid); lab.wait()
        log.close()
