"""Nothing lost: the faults a real user hits, each driven for real (torn journal, SIGTERM, a lost, corrupt or
unreachable MLflow store, two searches at once, resume, a dying worker), and what the search says and keeps.

Spaces are the tiny ones of ``test_search.py`` (MQAR, vocab 16, 16 positions, one layer, 20 steps: 1-2 s a
trial). Searches run in this process through ``nas.cli.main`` unless a process is needed to signal or kill.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_search import json_in, load_study, mlflow_runs, run_cli, space_text, states

from nas import registry
from nas.search.executor import classify_death
from nas.search.store import SearchLock, SearchPaths, repair_journal

BODY = "model: {d_model: [16, 32], n_layers: 1, n_heads: 2}"


def search(n: int, sampler: str = "random", extra: str = "") -> str:
    """Faults, not the search's economy, are tested here: the two architectures of BODY may each train again
    (``deduplicate: false``) and for the full budget (no early stopping), so a search of any length has trials
    of a known length to kill."""
    return (f"{{n_trials: {n}, concurrency: 2, sampler: {{type: {sampler}}}, deduplicate: false, "
            f"early_stopping: {{enabled: false}}, dir: out{extra}}}")


@pytest.fixture(scope="module", autouse=True)
def _isolated() -> Any:
    with registry.REGISTRY.scratch():
        yield
    import ray

    ray.shutdown()


def write(cwd: Path, name: str, n: int, body: str = BODY, **kw: Any) -> str:
    (cwd / f"{name}{n}.yaml").write_text(space_text(name, body, search(n, **kw)))
    return f"{name}{n}.yaml"


def run_process(cwd: Path, *argv: str, timeout: float = 300) -> tuple[int, str, str]:
    """``nas ARGV`` in a new process, as a user runs it (MLflow keeps its stores per process: a store deleted
    under a live process is another fault than a store lost between two runs)."""
    done = subprocess.run([sys.executable, "-m", "nas.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def curve_lengths(root: Path, name: str) -> dict[int, int]:
    client, _, children = mlflow_runs(root, name)
    return {int(c.data.tags["trial_number"]): len(client.get_metric_history(c.info.run_id, "train_loss"))
            for c in children}


# --- 1. a torn journal tail --------------------------------------------------------------------------------
def test_repair_journal_cuts_only_the_torn_tail(tmp_path):
    journal = tmp_path / "s.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 1}\n{"op_code": 4, "worker_id": "ab", "tri')
    message = repair_journal(journal)
    assert journal.read_bytes() == b'{"op_code": 0}\n{"op_code": 1}\n'
    assert "torn record (38 bytes" in message and (tmp_path / "s.journal.torn").read_bytes().endswith(b'"tri')
    assert repair_journal(journal) is None  # a whole journal is left alone
    journal.write_bytes(b'{"op_code": 0}\n{"op_co\n')  # torn, then a newline from a later write
    assert repair_journal(journal) and journal.read_bytes() == b'{"op_code": 0}\n'


def test_a_torn_journal_is_cut_off_with_a_message_and_the_search_resumes(tmp_path):
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "torn", 2), "--quiet")
    assert code == 0, out + err
    journal = tmp_path / "out" / "studies" / "torn.journal"
    with journal.open("ab") as f:  # the process died mid-write (or the disk filled up)
        f.write(b'{"op_code": 5, "worker_id": "1234-5678", "trial_id": 2, "state": 1, "val')
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "torn", 3), "--quiet", "--json")
    assert code == 0, out + err
    assert any("torn record" in note for note in json_in(out)["notes"])
    assert states(load_study(tmp_path / "out", "torn")) == {"COMPLETE": 3}
    assert (journal.parent / "torn.journal.torn").exists()


# --- 2. SIGTERM ----------------------------------------------------------------------------------------------
def test_sigterm_stops_like_ctrl_c_and_exits_143(tmp_path):
    (tmp_path / "space.yaml").write_text(space_text("term", BODY, search(1000)))
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", "space.yaml", "--quiet", "--json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        journal = tmp_path / "out" / "studies" / "term.journal"
        while time.monotonic() < deadline:  # SIGTERM once a trial finished and others run
            if journal.exists() and states(load_study(tmp_path / "out", "term")).get("COMPLETE", 0) >= 1:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert json_in(out)["stopped_by"] == "SIGTERM"
    study = load_study(tmp_path / "out", "term")
    assert "RUNNING" not in states(study)
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert all("SIGTERM" in t.user_attrs["reason"] for t in interrupted)
    _, parent, children = mlflow_runs(tmp_path / "out", "term")
    assert parent.info.status == "KILLED" and "RUNNING" not in {c.info.status for c in children}


def test_ctrl_c_exits_130(tmp_path):
    (tmp_path / "space.yaml").write_text(space_text("intr", BODY, search(1000)))
    code, out, err = run_cli(tmp_path, "search", "space.yaml", "--quiet", timeout=12)  # the watchdog's Ctrl-C
    assert code == 130, out + err
    assert "RUNNING" not in states(load_study(tmp_path / "out", "intr"))


# --- 3. a lost, corrupt or unreachable MLflow store -----------------------------------------------------------
@pytest.mark.parametrize("fault", ["deleted", "corrupt"])
def test_a_lost_or_corrupt_mlflow_store_is_rebuilt_from_the_journal(tmp_path, fault):
    code, out, err = run_process(tmp_path, "search", write(tmp_path, "lost", 2), "--quiet")
    assert code == 0, out + err
    store = tmp_path / "out" / "mlflow.db"
    if fault == "deleted":
        store.unlink()
    else:
        store.write_bytes(b"this is not a database" * 100)
    code, out, err = run_process(tmp_path, "search", write(tmp_path, "lost", 3), "--quiet", "--json")
    assert code == 0, out + err
    notes = " ".join(json_in(out)["notes"])
    assert "rebuilt from the study journal" in notes
    if fault == "corrupt":
        assert "is corrupt" in notes and list((tmp_path / "out").glob("mlflow.db.corrupt-*"))
    study = load_study(tmp_path / "out", "lost")
    _, parent, children = mlflow_runs(tmp_path / "out", "lost")
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert {c.info.status for c in children} == {"FINISHED"}
    lengths = curve_lengths(tmp_path / "out", "lost")
    assert lengths == {t.number: len(t.user_attrs["curve"]) for t in study.trials} and min(lengths.values()) > 0
    for child in children:  # the rebuilt runs hold the journal's figures
        trial = study.trials[int(child.data.tags["trial_number"])]
        assert child.data.metrics["accuracy"] == pytest.approx(trial.user_attrs["metrics"]["accuracy"])
        assert child.data.params["model.d_model"] == str(trial.user_attrs["architecture"]["d_model"])


def test_mlflow_tracking_uri_is_honoured(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "uri", 2), "--quiet")
    assert code == 0, out + err
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{other}")
    runs = client.search_runs([client.get_experiment_by_name("uri").experiment_id])
    assert len(runs) == 3 and not (tmp_path / "out" / "mlflow.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(backend: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{backend}", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--default-artifact-root", str(backend.parent / "artifacts")],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
            import urllib.request

            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"mlflow server did not start: {log.read_text()[-2000:]}")


def test_a_tracking_server_killed_mid_search_ends_up_with_every_run_and_curve(tmp_path):
    """A real ``mlflow server`` on loopback, killed after the first trials and restarted a little later: the
    search never waits on it, and once it answers again it receives every run with its whole curve."""
    port, backend, log = _free_port(), tmp_path / "server" / "mlflow.db", tmp_path / "server.log"
    backend.parent.mkdir()
    server = _start_server(backend, port, log)
    text = space_text("served", BODY, search(20).replace("concurrency: 2", "concurrency: 1"))
    (tmp_path / "space.yaml").write_text(text.replace("steps: 20,", "steps: 300,"))  # trials of a few seconds
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", "space.yaml", "--quiet", "--json",
                             "--tracking-uri", uri], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        journal = tmp_path / "out" / "studies" / "served.journal"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if journal.exists() and states(load_study(tmp_path / "out", "served")).get("COMPLETE", 0) >= 2:
                break
            time.sleep(0.5)
        os.killpg(server.pid, signal.SIGKILL)  # the store goes away mid-search
        server.wait(timeout=30)
        time.sleep(4)
        server = _start_server(backend, port, log)  # and comes back while the search still runs
        out, err = proc.communicate(timeout=300)
    finally:
        for p in (proc, server):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-3000:]
    notes = " ".join(json_in(out)["notes"])
    assert "not answering" in notes and "answers again" in notes
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{backend}")
    runs = client.search_runs([client.get_experiment_by_name("served").experiment_id], max_results=100)
    study = load_study(tmp_path / "out", "served")
    children = [r for r in runs if r.data.tags.get("nas.kind") == "trial"]
    by_number = {int(r.data.tags["trial_number"]): r for r in children}
    assert sorted(by_number) == sorted(t.number for t in study.trials) and len(study.trials) == 20
    assert "RUNNING" not in {r.info.status for r in runs}
    for t in study.trials:
        history = client.get_metric_history(by_number[t.number].info.run_id, "train_loss")
        assert len(history) == len(t.user_attrs["curve"]) > 0, t.number


# --- 4. one writer per search ------------------------------------------------------------------------------------
def test_a_second_search_of_the_same_name_is_refused_naming_the_holder(tmp_path):
    name = write(tmp_path, "locked", 2)
    lock = SearchLock(SearchPaths(tmp_path / "out", "locked"))
    lock.acquire()  # as a running `nas search` holds it
    try:
        code, out, err = run_cli(tmp_path, "search", name, "--quiet")
    finally:
        lock.release()
    assert code == 2
    assert f"already running (pid {os.getpid()} on host {socket.gethostname()}" in err
    assert not (tmp_path / "out" / "studies" / "locked.journal").exists()  # nothing written


def test_a_stale_lock_from_a_dead_process_is_taken_over(tmp_path):
    lock_file = tmp_path / "out" / "studies" / "stale.lock"
    lock_file.parent.mkdir(parents=True)
    lock_file.write_text("pid 999999 on host gone\n")  # written by a process that no longer holds it
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "stale", 2), "--quiet")
    assert code == 0, out + err


# --- 5. resume continues the sampler's stream ----------------------------------------------------------------------
def test_a_resumed_search_does_not_replay_the_architectures_it_has(tmp_path):
    body = """
        model: {d_model: 16, n_layers: 1, n_heads: 2}
        space:
          position: [{type: rope, base: {low: 100, high: 1000000, log: true}}]
        """
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "stream", 3, body=body), "--quiet")
    assert code == 0, out + err
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "stream", 6, body=body), "--quiet")
    assert code == 0, out + err
    bases = [t.params["position.rope.base"] for t in load_study(tmp_path / "out", "stream").trials]
    assert len(bases) == 6 and len(set(bases)) == 6, bases  # the replayed stream gave trials 3-5 = trials 0-2


# --- 6. exit codes, failed attempts, failure classification -------------------------------------------------------
RAISES = '''
from typing import Literal
from torch import nn
from nas import BlockConfig, Capabilities, register


@register("attention", "t_broken")
class Broken(nn.Module):
    """Raises in every forward."""

    class Config(BlockConfig):
        type: Literal["t_broken"] = "t_broken"

    capabilities = Capabilities(causal=True, bidirectional=True)

    def __init__(self, config, dims, position):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x):
        raise RuntimeError("t_broken says no")
'''

DIES_ONCE = '''
import os
from pathlib import Path
from typing import Literal
from torch import nn
from nas import BlockConfig, Capabilities, register

MARKER = Path(__file__).with_name("died_once")


@register("attention", "t_dies_once")
class DiesOnce(nn.Module):
    """Kills its worker process the first time any instance runs, then works."""

    class Config(BlockConfig):
        type: Literal["t_dies_once"] = "t_dies_once"

    capabilities = Capabilities(causal=True, bidirectional=True)

    def __init__(self, config, dims, position):
        super().__init__()
        self.proj = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x):
        if not MARKER.exists():
            MARKER.write_text("x")
            os._exit(1)
        return self.proj(x)
'''


def test_a_search_where_every_trial_failed_exits_1(tmp_path):
    (tmp_path / "nas_t_broken.py").write_text(RAISES)
    body = BODY + "\nspace: {attention: [{type: t_broken}], position: [{type: sinusoidal}]}"
    (tmp_path / "space.yaml").write_text(space_text("allfail", body, search(2), plugins="nas_t_broken"))
    code, out, err = run_cli(tmp_path, "search", "space.yaml", "--quiet", "--json")
    assert code == 1, out + err
    assert json_in(out)["aborted"] is None and json_in(out)["counts"]["failed"] == 2


def test_a_retried_attempt_is_tagged_with_its_number_and_the_reason_before(tmp_path):
    (tmp_path / "nas_t_dies_once.py").write_text(DIES_ONCE)
    body = BODY + "\nspace: {attention: [{type: t_dies_once}], position: [{type: sinusoidal}]}"
    extra = ", retries: 1"
    (tmp_path / "space.yaml").write_text(space_text("retry", body, search(2, extra=extra), plugins="nas_t_dies_once"))
    code, out, err = run_cli(tmp_path, "search", "space.yaml", "--quiet")
    assert code == 0, out + err
    study = load_study(tmp_path / "out", "retry")
    assert states(study) == {"COMPLETE": 2}
    (retried,) = [t for t in study.trials if t.user_attrs.get("attempts") == 2]
    _, _, children = mlflow_runs(tmp_path / "out", "retry")
    run = next(c for c in children if c.data.tags["trial_number"] == str(retried.number))
    assert run.data.tags["attempt"] == "2" and run.data.tags["previous_failure"].startswith("worker died")
    assert run.info.status == "FINISHED"


def test_a_dead_trial_process_is_out_of_memory_only_with_evidence():
    killed = classify_death(-9, "step 3\n", 300 * 2**20, 512)
    assert killed.startswith("the trial process died: killed by SIGKILL; peak resident memory 300 MiB, limit "
                             "search.resources.memory_mb = 512"), killed
    assert classify_death(1, "Traceback...\nValueError: bad shape\n", 10 * 2**20, 512).startswith(
        "the trial process died: exit code 1") and "bad shape" in classify_death(1, "ValueError: bad shape", 0, 512)
    aborted = classify_death(-6, "terminate called after throwing an instance of 'std::bad_alloc'\n", 0, 512)
    assert aborted.startswith("out of memory: killed by SIGABRT") and "std::bad_alloc" in aborted


def test_a_journal_lock_left_by_a_killed_search_is_cleared_not_waited_on(tmp_path):
    """SIGKILL while Optuna holds its journal lock (a symlink) left the next run waiting for ever."""
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "stuck", 1), "--quiet")
    assert code == 0, out + err
    studies = tmp_path / "out" / "studies"
    (studies / "stuck.journal.lock").symlink_to("out/studies/stuck.journal")  # as the killed process left it
    started = time.monotonic()
    code, out, err = run_cli(tmp_path, "search", write(tmp_path, "stuck", 2), "--quiet", "--json", timeout=120)
    assert code == 0, out + err
    assert any("removed the journal lock" in note for note in json_in(out)["notes"])
    assert time.monotonic() - started < 100 and states(load_study(tmp_path / "out", "stuck")) == {"COMPLETE": 2}
