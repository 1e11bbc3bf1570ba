"""The explorer works for a person: JupyterLab in a real headless Chromium.

Widget front-end/back-end mismatches ("Error displaying widget", "Model not found") only show
in a browser, so this test starts JupyterLab on 127.0.0.1 (a free port, a random token, all
Jupyter config/data/runtime dirs in a temporary folder, the kernel pinned to this Python),
opens a copy of notebooks/00_explore.ipynb with tiny parameters, runs all cells from the Run
menu, waits for the panel and its first figure, steps the m% slider with the keyboard and
checks that the figure is redrawn for the new m and that no widget error shows anywhere.
Screenshots are kept in tests/_outputs/.

It needs Debian's chromium (`make browser`, or apt-get install chromium) and the playwright
Python package; browser downloads are never attempted (Playwright is pointed at the system
binary). Without them it skips, saying which is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "00_explore.ipynb"
OUTPUTS = Path(__file__).resolve().parent / "_outputs"
CHROMIUM = os.environ.get("FLCORE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # we may run as root (CI containers)
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Tiny runs: the test is about the widgets, not the numbers.
PARAMETERS = {"n_train": 1500, "n_test": 500, "rounds": 4, "m_percent": 20, "device": "cpu"}
WIDGET_ERRORS = ("Error displaying widget", "Model not found", "Failed to load model class")
# JupyterLab start + kernel start + the first two tiny federations
FIRST_RENDER_S = int(os.environ.get("FLCORE_BROWSER_TIMEOUT", "120"))
REDRAW_S = 90


def _browser_or_skip():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (install it: `make browser` or apt-get install "
                    "chromium; or set FLCORE_CHROMIUM=/path/to/chromium)")  # fmt: skip
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing (pip install -e '.[dev]')")
    for module in ("jupyterlab", "ipywidgets", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} missing (pip install -e '.[notebooks]')")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook_copy(dest: Path, store: Path) -> None:
    """notebooks/00_explore.ipynb with the tiny parameters written into its parameters cell."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "00_explore.ipynb needs exactly one cell tagged 'parameters'"
    names = re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.MULTILINE)
    values = {**PARAMETERS, "store": str(store)}
    missing = sorted(set(values) - set(names))
    assert not missing, f"00_explore.ipynb's parameters cell lacks {missing} (has {names})"
    cells[0].source += "\n# browser test\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    for cell in nb.cells:  # start from a clean notebook even if someone committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, dest / NOTEBOOK.name)


def _jupyter_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    dirs = {
        "JUPYTER_CONFIG_DIR": tmp / "config",
        "JUPYTER_DATA_DIR": tmp / "data",
        "JUPYTER_RUNTIME_DIR": tmp / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": tmp / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": tmp / "lab-workspaces",
        "IPYTHONDIR": tmp / "ipython",
        "MPLCONFIGDIR": tmp / "matplotlib",
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env.update({k: str(v) for k, v in dirs.items()})
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["JUPYTER_PREFER_ENV_PATH"] = "0"  # our kernel spec (below) before the venv's
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # The kernel is this interpreter (the venv's), whatever other kernels exist on the machine.
    spec = dirs["JUPYTER_DATA_DIR"] / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (flcore test)", "language": "python",
    }))  # fmt: skip
    # No news/update toasts over the notebook, no kernel chooser: start the notebook's kernel.
    settings = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab"
    for plugin, values in {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"autoStartDefaultKernel": True},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return env


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server for this test only: (base URL, token, root dir); shut down after."""
    _browser_or_skip()
    tmp = tmp_path_factory.mktemp("jupyterlab")
    root = tmp / "root"
    root.mkdir()
    _notebook_copy(root, tmp / "store")
    env = _jupyter_env(tmp)
    port, token = _free_port(), secrets.token_hex(24)
    log = open(tmp / "jupyterlab.log", "w")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None",
         "--LabApp.extension_manager=readonly"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        log.flush()
        return (tmp / "jupyterlab.log").read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_tail()}")
            try:
                req = urllib.request.Request(f"{base}/api/status",
                                             headers={"Authorization": f"token {token}"})  # fmt: skip
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on {base} within 60 s:\n{log_tail()}")
            time.sleep(0.3)
        req = urllib.request.Request(f"{base}/api/kernelspecs",
                                     headers={"Authorization": f"token {token}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            argv = json.load(r)["kernelspecs"]["python3"]["spec"]["argv"]
        assert argv[0] == sys.executable, f"the notebook's kernel would run {argv[0]}"
        yield base, token, root, log_tail
    finally:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})  # fmt: skip
            urllib.request.urlopen(req, timeout=5).close()
            proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:  # our own server's process group only (kernels included)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _wait_status(page, pattern: str, timeout_s: float, log_tail) -> str:
    """Wait until the explorer's status line matches `pattern` (fail early on an error)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        loc = page.locator(".flcore-explorer-status")
        if loc.count():
            text = loc.first.inner_text()
            if re.search(pattern, text):
                return text
            if "⚠" in text:
                pytest.fail(f"the explorer shows an error: {text}")
        _no_widget_errors(page)
        page.wait_for_timeout(250)
    page.screenshot(path=str(OUTPUTS / "explore_timeout.png"), full_page=True)
    pytest.fail(f"status never matched {pattern!r} in {timeout_s:.0f} s; last status: {text!r}\n"
                f"screenshot: tests/_outputs/explore_timeout.png\n{log_tail()}")  # fmt: skip


def _no_widget_errors(page) -> None:
    body = page.locator("body").inner_text()
    for needle in WIDGET_ERRORS:
        if needle in body:
            page.screenshot(path=str(OUTPUTS / "explore_widget_error.png"), full_page=True)
            pytest.fail(f"{needle!r} shown in the page (screenshot: tests/_outputs/"
                        f"explore_widget_error.png):\n{body[-2000:]}")  # fmt: skip


def _accept_kernel_dialog(page) -> None:
    """Older JupyterLab versions may still ask which kernel to start: take the notebook's."""
    select = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
    try:
        select.wait_for(state="visible", timeout=3_000)
    except Exception:  # noqa: BLE001 - no dialog is the normal case
        return
    select.click()


def _run_all_cells(page) -> None:
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def test_explorer_in_jupyterlab(lab, tmp_path):
    sync_playwright = _browser_or_skip()
    base, token, _root, log_tail = lab
    OUTPUTS.mkdir(exist_ok=True)
    console_errors: list[str] = []
    t0 = time.monotonic()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1100},
        )  # fmt: skip
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            _accept_kernel_dialog(page)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=60_000)  # fmt: skip
            _run_all_cells(page)

            page.wait_for_selector(
                ".flcore-explorer", state="visible", timeout=FIRST_RENDER_S * 1000
            )
            first = _wait_status(page, r"redraw #1\b", FIRST_RENDER_S, log_tail)
            assert "m = 20%" in first, first
            figure = page.locator("img.flcore-explorer-figure")
            figure.scroll_into_view_if_needed()
            page.wait_for_function(
                "el => el.complete && el.naturalWidth > 400", arg=figure.element_handle()
            )
            src_before = figure.get_attribute("src")
            pixels_before = figure.screenshot()
            page.screenshot(path=str(OUTPUTS / "explore_before.png"), full_page=True)

            # Step the m% slider with the keyboard, as a person would with the arrow keys.
            m_slider = page.locator(".flcore-explorer .widget-slider").first
            assert "m (%)" in m_slider.inner_text()
            m_slider.locator(".noUi-handle").first.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
                page.wait_for_timeout(100)
            readout = m_slider.locator(".widget-readout").first
            page.wait_for_function("el => el.textContent.trim() !== '20'",
                                   arg=readout.element_handle(), timeout=10_000)  # fmt: skip
            m_new = int(readout.inner_text().strip())
            assert 20 < m_new <= 26, m_new

            after = _wait_status(page, rf"m = {m_new}%.*redraw #[2-9]", REDRAW_S, log_tail)
            page.wait_for_function(
                "([el, before]) => el.complete && el.naturalWidth > 400 && el.src !== before",
                arg=[figure.element_handle(), src_before],
            )
            figure.scroll_into_view_if_needed()
            pixels_after = figure.screenshot()
            page.screenshot(path=str(OUTPUTS / "explore_after.png"), full_page=True)
            (OUTPUTS / "explore_figure_after.png").write_bytes(pixels_after)

            assert figure.get_attribute("src") != src_before
            assert pixels_after != pixels_before, "the figure's pixels did not change"
            assert "✔" in after and "⚠" not in after

            # A dropdown too: availability enables the α slider and redraws with α in the title.
            alpha_handle = page.locator(".flcore-explorer .widget-slider").nth(1)
            assert "α" in alpha_handle.inner_text()
            assert alpha_handle.locator("[disabled]").count() > 0, "α should start disabled"
            strategy = page.locator(".flcore-explorer .widget-dropdown select").nth(2)
            strategy.select_option(label="availability α (r ≥ b)")
            _wait_status(page, r"availability.*α = 0\.9.*redraw #[3-9]", REDRAW_S, log_tail)
            page.wait_for_function("el => el.querySelectorAll('[disabled]').length === 0",
                                   arg=alpha_handle.element_handle(), timeout=10_000)  # fmt: skip
            page.screenshot(path=str(OUTPUTS / "explore_availability.png"), full_page=True)
            _no_widget_errors(page)
            widget_console = [e for e in console_errors if any(w in e for w in WIDGET_ERRORS)
                              or "widget" in e.lower()]  # fmt: skip
            assert not widget_console, widget_console
        except BaseException:
            page.screenshot(path=str(OUTPUTS / "explore_failure.png"), full_page=True)
            print(f"screenshot: tests/_outputs/explore_failure.png\n{log_tail()}")
            raise
        finally:
            context.close()
    elapsed = time.monotonic() - t0
    print(f"browser test: {elapsed:.1f} s; screenshots in {OUTPUTS}")
