"""The MLflow UI as a user meets it: a real headless Chromium (the distribution's package, driven by Selenium
through its chromedriver; nothing is downloaded) opens what `nas ui` serves after a tiny search.

Checks: the URL `nas ui` prints opens the runs table in the training view with the front's saved view (front
trials only, starred, the objectives as columns); the parent run's description shows the front table linking
its trials; a front trial's logged model has its page. Screenshots of the experiment view and of the parent run
are saved to $NAS_SCREENSHOTS (default: the test's tmp folder). Skipped, saying why, without Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_search import mlflow_runs, run_cli, space_text

from nas import registry

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
try:
    import selenium  # noqa: F401
    MISSING = None
except ImportError:
    MISSING = "selenium is not installed (pip install -e '.[dev]')"
if MISSING is None and not (os.access(CHROMIUM, os.X_OK) and os.access(DRIVER, os.X_OK)):
    MISSING = ("no Chromium: install the distribution's chromium and chromium-driver (Debian: apt-get install "
               "chromium chromium-driver; .ci/run does)")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser test: {MISSING}")

BODY = """
    model: {d_model: [16, 32], n_layers: 1, n_heads: 2}
    space:
      position: [{type: rope}, {type: sinusoidal}]
    """


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A search of 3 trials, and `nas ui` serving its store: (folder, printed URL)."""
    cwd = tmp_path_factory.mktemp("browser")
    (cwd / "space.yaml").write_text(space_text("browse", BODY, "{n_trials: 3, concurrency: 2, dir: out}"))
    with registry.REGISTRY.scratch():
        code, out, err = run_cli(cwd, "search", "space.yaml", "--quiet")
    import ray

    ray.shutdown()
    assert code == 0, out + err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "ui", "--dir", "out", "--port", str(port)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("browse: http" in line for line in lines):
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    try:
        url = next(line.split(": ", 1)[1].strip() for line in lines if "browse: http" in line)
        assert any(line.startswith("MLflow UI ready in") for line in lines), lines
        yield cwd, url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1920,1080"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _page(driver: Any, url: str, *texts: str, timeout: float = 60) -> str:
    """Open ``url`` and wait until the page shows every one of ``texts``; returns the page's text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline, body = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            time.sleep(0.5)  # let the last cells render before a screenshot
            return str(driver.find_element(By.TAG_NAME, "body").text)
        time.sleep(0.5)
    raise AssertionError(f"{url} did not show {texts}; it shows:\n{body[:3000]}")


def _shot(driver: Any, name: str, tmp: Path) -> None:
    folder = Path(os.environ.get("NAS_SCREENSHOTS", tmp))
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / f"{name}.png"))


def test_the_printed_url_opens_the_front_in_the_training_view(served, browser, tmp_path):
    cwd, url = served
    _, parent, children = mlflow_runs(cwd / "out", "browse")
    front = [c for c in children if c.data.tags["pareto"] == "true"]
    body = _page(browser, url, "Pareto front of browse", *(c.info.run_name for c in front))
    _shot(browser, "experiment-view", tmp_path)
    assert "Model training" in body and "tags.pareto = 'true'" in browser.page_source
    assert "Sort: accuracy" in body
    for column in ("accuracy", "latency_ms", "model.d_model", "position.type"):
        assert column in body, column  # the objectives and the searched parameters are columns
    assert re.search(rf"\b{len(front)} matching runs?\b", body), body[-500:]  # the front only ("1 matching run")
    assert not any(c.info.run_name in body for c in children if c.data.tags["pareto"] != "true")


def test_the_parent_run_describes_the_front_and_a_front_model_has_its_page(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    cwd, url = served
    _, parent, children = mlflow_runs(cwd / "out", "browse")
    base = url.split("#")[0]
    experiment = parent.info.experiment_id
    body = _page(browser, f"{base}#/experiments/{experiment}/runs/{parent.info.run_id}?workflowType=machine_learning",
                 "Pareto front of browse")
    assert "Hypervolume" in browser.page_source  # (below the fold of the description until "Show more")
    _shot(browser, "parent-run", tmp_path)
    front = [c for c in children if c.data.tags["pareto"] == "true"]
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a")]
    for child in front:
        assert f"t{int(child.data.tags['trial_number']):03d}" in browser.page_source
        assert any(href and href.endswith(f"/runs/{child.info.run_id}") for href in links), child.info.run_name
    model = front[0].data.tags["nas.model_id"]
    body = _page(browser, f"{base}#/experiments/{experiment}/models/{model}?workflowType=machine_learning",
                 "Register model", front[0].info.run_name)
    assert "model.d_model" in body and "accuracy" in body
