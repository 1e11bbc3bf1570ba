"""`reproduce` as plan -> compute -> render, with real processes: a Dask LocalCluster computes
the same tables as this process, a killed compute resumes without recomputing a finished
configuration (and ends with the same tables), the render step never trains, and a
profile's runs survive an export and import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytest.importorskip("papermill")

from flcore.runs import compute as cp
from flcore.runs.export import export_runs, import_runs
from flcore.runs.runner import store_key
from flcore.runs.store import Store
from flcore.studies.reproduce import REPO_ROOT, execute, planned_configs, prepare, profile_settings, render

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

COMMON = {"n_train": {"fmnist": 500}, "n_test": {"fmnist": 200}, "rounds": 3, "seed": 0,
          "precision": "fp32", "warm_start": {"fmnist": 2}}  # fmt: skip
TINY = {
    "01_feasibility": {"repeats": 2, "baseline_repeats": 2, "pairs": [["fmnist", 4, 6], ["fmnist", 6, 0]],
                       "m_values": [0.0, 0.1, 0.3, 0.5], "fig1_pairs": [["fmnist", 4, 6]]},
    "02_targeting": {"repeats": 2, "baseline_repeats": 2, "pairs": [["fmnist", 4, 6], ["fmnist", 6, 0]],
                     "m": 0.1},
}  # fmt: skip
TABLES = ("table2_source_recall_loss.csv", "table3_targeting.csv")
KW = dict(only=["01", "02"], threads=1, max_federations=4)  # 2 configs of 2 repeats per stack


def _params(tmp: Path) -> Path:
    d = tmp / "params"
    d.mkdir(exist_ok=True)
    for name, p in TINY.items():
        (d / f"{name}.yaml").write_text(yaml.safe_dump(COMMON | p))
    return d


def _extra(tmp: Path) -> dict:
    return {"output_dir": str(tmp / "figures"), "results": str(tmp / "results")}


def _tables(tmp: Path) -> dict[str, bytes]:
    return {t: (tmp / "figures" / "t" / t).read_bytes() for t in TABLES}


def _entry_ids(path: Path) -> dict[str, tuple]:
    st = Store(path)
    return {k: ((path / k).stat().st_ino, (path / k / "MANIFEST.json").read_bytes()) for k in st}


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The tiny profile computed and rendered in this process."""
    tmp = tmp_path_factory.mktemp("inproc")
    execute("t", params_dir=_params(tmp), reports_dir=tmp / "reports", extra=_extra(tmp),
            log=lambda *a, **k: None, **KW)  # fmt: skip
    return tmp


def test_local_cluster_writes_the_same_tables(in_process, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        execute("t", params_dir=_params(tmp_path), reports_dir=tmp_path / "reports",
                extra=_extra(tmp_path), log=lambda *a, **k: None, executor=client, **KW)  # fmt: skip
    assert _tables(tmp_path) == _tables(in_process)
    pids = {json.loads((p / "meta.json").read_text()).get("pid") for p in (tmp_path / "results").iterdir()
            if (p / "meta.json").exists()}  # fmt: skip
    assert pids and os.getpid() not in pids  # the workers computed and stored them


def test_killed_compute_resumes_and_ends_with_the_same_tables(in_process, tmp_path):
    params = _params(tmp_path)
    script = (f"import torch; torch.set_num_threads(1)\n"
              f"from pathlib import Path\nfrom flcore.studies.reproduce import execute\n"
              f"execute('t', only=['01', '02'], threads=1, max_federations=4, params_dir=Path({str(params)!r}), "
              f"reports_dir=Path({str(tmp_path / 'reports')!r}), extra={_extra(tmp_path)!r})\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    store = tmp_path / "results"
    total = len({store_key(c) for cs in planned_configs(prepare("t", ["01", "02"], None, REPO_ROOT, params,
                                                                  _extra(tmp_path))[1]).values() for c in cs})  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # the warm-up and at least one stack of 2 configurations stored, then kill
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists() and len(Store(store).keys()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _entry_ids(store)
    assert 3 <= len(before) < total + 1, (len(before), total)  # + 1: the warm-up
    stats = {}
    execute("t", params_dir=params, reports_dir=tmp_path / "reports", extra=_extra(tmp_path),
            log=lambda *a, **k: stats.setdefault("lines", []).append(" ".join(map(str, a))), **KW)  # fmt: skip
    now = _entry_ids(store)
    assert all(now[k] == v for k, v in before.items()), "an entry stored before the kill was rewritten"
    assert len(now) == total + 1
    # the stacks are cut from the whole plan, so the resumed compute rounds as one in one go
    assert _tables(tmp_path) == _tables(in_process)


def test_render_never_trains_and_names_the_missing_configuration(in_process, tmp_path):
    import shutil

    shutil.copytree(in_process / "results", tmp_path / "results")
    out_name, plan = prepare("t", ["01"], None, REPO_ROOT, _params(tmp_path), _extra(tmp_path))
    victim = planned_configs(plan)["01_feasibility"][-1]
    assert Store(tmp_path / "results").delete(store_key(victim))
    with pytest.raises(RuntimeError, match="render only: the configuration .*m=0.5.* is not in the result store"):
        render(plan, out_name, REPO_ROOT, tmp_path / "reports", log=lambda *a, **k: None)
    assert not Store(tmp_path / "results").has(store_key(victim))  # nothing was trained


def test_export_import_round_trip_and_stale_runs_skipped(in_process, tmp_path):
    src = in_process / "results"
    keys = Store(src).keys()
    info = export_runs(src, keys, tmp_path / "runs")
    assert info["runs"] == len(keys) and info["bytes"] > 0
    st = import_runs(tmp_path / "runs", tmp_path / "store")
    assert st == {"runs": len(keys), "imported": len(keys), "present": 0, "stale": 0, "checkpoints": 0}
    a, b = Store(src), Store(tmp_path / "store")
    for k in keys:
        ea, eb = a.get(k), b.get(k)
        assert ea.config == eb.config and ea.meta == eb.meta
        for name in ea.frames:
            pd.testing.assert_frame_equal(ea.frames[name], eb.frames[name], check_exact=True)
        for name in ea.arrays:
            assert (ea.arrays[name] == eb.arrays[name]).all() and ea.arrays[name].dtype == eb.arrays[name].dtype
    # importing again changes nothing; a planned compute has nothing left to do
    assert import_runs(tmp_path / "runs", tmp_path / "store")["present"] == len(keys)
    _, plan = prepare("t", ["01", "02"], None, REPO_ROOT, _params(tmp_path), _extra(tmp_path))
    configs = [c for cs in planned_configs(plan).values() for c in cs]
    p = cp.plan(configs, tmp_path / "store", 4)
    assert p.pending == [] and p.stacks == [] and len(p.stored) == len(p.configs)
    # a run whose configuration this code keys differently (other numbers) is never imported
    runs = pd.read_parquet(tmp_path / "runs" / "runs.parquet")
    cfg = json.loads(runs.loc[0, "config"])
    cfg["lr"] = cfg["lr"] * 2
    runs.loc[0, "config"] = json.dumps(cfg, sort_keys=True)
    runs.to_parquet(tmp_path / "runs" / "runs.parquet", index=False)
    st = import_runs(tmp_path / "runs", tmp_path / "fresh")
    assert st["stale"] == 1 and st["imported"] == len(keys) - 1
    assert runs.loc[0, "key"] not in Store(tmp_path / "fresh").keys()


def test_export_only_writes_the_store_as_it_is_and_trains_nothing(in_process, tmp_path):
    lines: list[str] = []
    extra = {"output_dir": str(tmp_path / "figures"), "results": str(in_process / "results")}
    written = execute("t", params_dir=_params(in_process), reports_dir=tmp_path / "reports", extra=extra,
                      log=lambda *a, **k: lines.append(" ".join(map(str, a))), export_only=True, **KW)  # fmt: skip
    runs = pd.read_parquet(tmp_path / "figures" / "t" / "runs" / "runs.parquet")
    assert len(runs) > 0 and set(runs["key"]) <= set(Store(in_process / "results").keys())
    assert any(f": {len(runs)} runs, 0 checkpoints of stacks stopped part-way" in line for line in lines), lines
    assert all(p.suffix == ".parquet" for p in written) and not (tmp_path / "reports").exists()


def test_dry_run_reports_the_plan_and_trains_nothing(in_process, tmp_path):
    lines: list[str] = []
    execute("t", params_dir=_params(tmp_path), reports_dir=tmp_path / "reports", extra=_extra(tmp_path),
            log=lambda *a, **k: lines.append(" ".join(map(str, a))), dry_run=True, **KW)  # fmt: skip
    text = "\n".join(lines)
    assert "01_feasibility" in text and "02_targeting" in text
    assert "estimated wall time here:" in text and "s per experiment-round" in text
    assert Store(tmp_path / "results").keys() == []
    assert not (tmp_path / "reports").exists()
    # everything stored: 0 pending, no calibration needed
    lines.clear()
    execute("t", params_dir=_params(in_process), reports_dir=tmp_path / "reports", extra=_extra(in_process),
            log=lambda *a, **k: lines.append(" ".join(map(str, a))), dry_run=True, **KW)  # fmt: skip
    text = "\n".join(lines)
    assert "pending: 0 configurations in 0 stacks" in text and "0 s (everything is stored)" in text


def test_report_is_written_from_the_stored_runs(in_process, tmp_path):
    """REPRODUCTION.md-style report of the tiny profile: computed cells carry our numbers (those
    of the rendered Table 2), cells without runs say so."""
    from flcore.studies.report import write

    out = write("t", tmp_path / "R.md", REPO_ROOT, log=lambda *a, **k: None, params_dir=_params(in_process),
                extra=_extra(in_process))  # fmt: skip
    text = out.read_text()
    t2 = pd.read_csv(in_process / "figures" / "t" / "table2_source_recall_loss.csv")
    rows = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): line for line in text.splitlines()
            if line.startswith("| ") and "→" in line and "%" in line.split("|")[2]}  # fmt: skip
    for r in t2.itertuples():
        line = rows[f"{r.src}→{r.tgt} {100 * r.m:g}%"]
        assert f"| {r.mean:.1f} |" in line and f"| {r.runs} |" in line, line
    assert not any(k.startswith("1→3") for k in rows)  # a pair the profile does not plan
    assert "configurations computed: **" in text and "## The paper's findings" in text
    # the tiny profile is wholly stored: the report says so instead of calling anything pending
    assert "all stored: `python -m flcore reproduce --profile t` re-renders" in text
    assert "the rest is pending" not in text


def test_client_state_profile_plans_the_same_cells_persistent():
    """paper-fmnist-persistent plans paper-fmnist's Table 2 and Table 4 runs (notebooks 01 and
    03) with the authors' client state: every configuration persistent, no store key shared."""
    _, nbs = prepare("paper-fmnist-persistent")
    persistent = planned_configs(nbs)
    assert set(persistent) == {"01_feasibility", "03_timing"}
    assert all(c.client_state == "persistent" for cs in persistent.values() for c in cs)
    _, nbs = prepare("paper-fmnist", only=["01", "03"])
    stateless = planned_configs(nbs)
    assert all(c.client_state == "stateless" for cs in stateless.values() for c in cs)
    assert [len(cs) for cs in persistent.values()] == [len(cs) for cs in stateless.values()]
    keys = {store_key(c) for cs in stateless.values() for c in cs}
    assert not keys & {store_key(c) for cs in persistent.values() for c in cs}
    assert [c.replace(client_state="stateless") for c in persistent["01_feasibility"]] == stateless["01_feasibility"]
    # and at 10 repeats: paper-fmnist-persistent-10 is paper-fmnist-10 with the authors' client
    # state, extending paper-fmnist-persistent's runs as paper-fmnist-10 extends paper-fmnist's
    (ten,) = planned_configs(prepare("paper-fmnist-10")[1]).values()
    (ten_p,) = planned_configs(prepare("paper-fmnist-persistent-10")[1]).values()
    assert ten_p == [c.replace(client_state="persistent") for c in ten]
    assert [c.replace(repeats=3) for c in ten_p if c.m > 0] == [c for c in persistent["01_feasibility"] if c.m > 0]
    assert profile_settings("paper-fmnist-persistent-10", REPO_ROOT / "params" / "paper-fmnist-persistent-10")["extends"] == ["paper-fmnist-persistent"]
    assert profile_settings("paper-fmnist-10", REPO_ROOT / "params" / "paper-fmnist-10")["compare_with"] == "paper-fmnist-persistent-10"


def test_client_state_section_says_which_mode_is_closer(in_process):
    """The client-state comparison on the tiny profile's real runs: the same runs in both columns
    tie cell by cell; a second mode whose source recall is 5 pp lower in every repeat differs
    beyond the paired interval, and is closer to the paper exactly where a larger loss is; a
    second mode that differs only by noise (+20 pp in one repeat, -20 in another) is closer
    nowhere; with no runs in the second mode nothing is compared."""
    from flcore.studies.report import _frames, client_state_section

    d = _frames("t", REPO_ROOT, _params(in_process), _extra(in_process))
    final, late, pairs = d["final"], d["late"], d["pairs"]

    def cells(text):
        head, *body = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln]
        cols = [c.strip() for c in head.strip("|").split("|")]
        return [dict(zip(cols, (c.strip() for c in ln.strip("|").split("|")))) for ln in body]

    def mean(c, col):
        return float(c[col].split()[0])

    same = cells(client_state_section(final, late, final, late, pairs, "a", "b"))
    computed = [c for c in same if c["a"] != "–"]
    assert computed and all(c["closer"] == "tie" for c in computed)
    assert all(c["difference (95% CI, paired runs)"].startswith("+0.0 ± 0.0") for c in computed)
    lower = final.copy()
    lower.loc[lower["m"] > 0, "source_recall"] -= 5.0
    text = client_state_section(final, late, lower, late, pairs, "a", "b")
    t2 = [c for c in cells(text) if c["table"].startswith("2") and c["a"] != "–"]
    assert t2
    for c in t2:
        a, b, paper = mean(c, "a"), mean(c, "b"), float(c["paper"])
        assert b == pytest.approx(a + 5.0, abs=0.11)
        assert c["difference (95% CI, paired runs)"].startswith("+5.0 ± 0.0")
        assert c["closer"] == ("a" if abs(a - paper) < abs(b - paper) else "b")
    assert f"a is closer to the paper in {sum(c['closer'] == 'a' for c in cells(text))}" in text
    attacked = final["m"] > 0
    assert final.loc[attacked, "repeat"].nunique() >= 2
    noisy = final.copy()
    noisy.loc[attacked & (noisy["repeat"] == 0), "source_recall"] += 20.0
    noisy.loc[attacked & (noisy["repeat"] == 1), "source_recall"] -= 20.0
    text = client_state_section(final, late, noisy, late, pairs, "a", "b")
    t2 = [c for c in cells(text) if c["table"].startswith("2") and c["a"] != "–"]
    assert t2 and all(c["closer"] == "no difference" for c in t2)
    none = client_state_section(final, late, None, None, pairs, "a", "b")
    assert all(c["closer"] == "–" for c in cells(none)) and none.count("No cell is computed in both modes yet.") == 1
    # profiles that run Table 2 only (as this one, and paper-fmnist-10 against paper-fmnist-persistent-10):
    # no Table 4 rows, and the summary says Table 2
    only2 = client_state_section(final, None, lower, None, pairs, "a", "b")
    assert cells(only2) and all(c["table"].startswith("2") for c in cells(only2))
    assert "On the final round (Table 2), of the" in only2 and "Tables 2 and 4" not in only2


def test_dry_run_estimate_spreads_stacks_over_workers(tmp_path, monkeypatch):
    """The estimate deals the stacks to the workers as the scheduler does (longest first to the
    worker free soonest), and slows every stack where the workers' threads exceed the cores."""
    monkeypatch.setattr(cp, "_cpu_busy_share", lambda: 0.0)  # an idle machine: the calibration is kept
    assert cp._makespan([3, 3, 2, 2, 2], 2) == 7 and cp._makespan([5, 1], 8) == 5 and cp._makespan([], 3) == 0
    _, nbs = prepare("t", KW["only"], None, REPO_ROOT, _params(tmp_path), _extra(tmp_path))
    p = cp.plan([c for cs in planned_configs(nbs).values() for c in cs], tmp_path / "results", KW["max_federations"])
    assert len(p.stacks) >= 2
    one = cp.estimate(p, tmp_path / "results", 1)
    two = cp.estimate(p, tmp_path / "results", 1, workers=2, cores=2)
    shared = cp.estimate(p, tmp_path / "results", 1, workers=2, cores=1)
    assert one["seconds"] == pytest.approx(one["serial_seconds"]) and two["serial_seconds"] == pytest.approx(one["seconds"])
    assert one["seconds"] / 2 <= two["seconds"] < one["seconds"]
    assert shared["oversubscribed"] == 2 and shared["seconds"] == pytest.approx(2 * two["seconds"])


def test_workers_on_this_machine_are_told_from_remote_ones():
    """The estimate shares this machine's cores among the workers only when they run here: on
    a loopback address or on one of its interfaces, not merely on a 127.x address."""
    import psutil

    from flcore.studies.reproduce import _is_this_machine

    assert _is_this_machine("127.0.0.1") and _is_this_machine("localhost")
    own = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
           if a.family.name == "AF_INET" and not a.address.startswith("127.")]  # fmt: skip
    assert all(_is_this_machine(ip) for ip in own)
    # a documentation address (RFC 5737) that is none of this machine's
    other = next(ip for ip in ("198.51.100.7", "203.0.113.7", "192.0.2.77") if ip not in own)
    assert not _is_this_machine(other)
    assert not _is_this_machine("no-such-host.invalid")


def test_paper_cifar_plans_paper_fmnists_cells_on_cifar10():
    """paper-cifar is paper-fmnist's plan on CIFAR-10 (its three pairs, the same m, timing,
    availability and repeats): notebook by notebook as many configurations, all CIFAR-10 at
    the paper's scale (200 rounds from initialisation, the full data, fp32)."""
    _, nbs = prepare("paper-cifar")
    cifar = planned_configs(nbs)
    _, nbs = prepare("paper-fmnist")
    fmnist = planned_configs(nbs)
    assert list(cifar) == list(fmnist) == ["01_feasibility", "02_targeting", "03_timing", "04_availability", "05_defense"]
    for stem in cifar:
        key = lambda cs: sorted((c.m, c.repeats, c.rounds, c.break_round, c.strategy, c.alpha or 0) for c in cs)  # noqa: E731
        assert key(cifar[stem]) == key(fmnist[stem]), stem
        assert all(c.dataset == "cifar10" and c.n_train is None and c.warm_start == 0 and c.precision == "fp32"
                   for c in cifar[stem])  # fmt: skip
    assert {(c.src, c.tgt) for c in cifar["01_feasibility"] if c.m > 0} == {(0, 2), (1, 9), (5, 3)}


def test_calibration_is_kept_an_hour_and_never_from_a_busy_machine(tmp_path, monkeypatch):
    """A calibration is kept in the store for CALIBRATION_MAX_AGE_S, keyed by the CPU's family
    and model; an older one is measured again, and one taken on a busy machine is flagged and
    not kept."""
    from flcore.sim.device import cpu_id

    _, nbs = prepare("t", ["01"], None, REPO_ROOT, _params(tmp_path), _extra(tmp_path))
    p = cp.plan([c for cs in planned_configs(nbs).values() for c in cs], tmp_path / "results", KW["max_federations"])
    path = tmp_path / "results" / cp.CALIBRATION_FILE
    monkeypatch.setattr(cp, "_cpu_busy_share", lambda: 5.0)
    notes: list[str] = []
    est = cp.estimate(p, tmp_path / "results", 1, log=notes.append)
    assert est["busy"] and any("this machine is busy" in n for n in notes)
    assert json.loads(path.read_text()) == {}
    monkeypatch.setattr(cp, "_cpu_busy_share", lambda: 0.0)
    assert not cp.estimate(p, tmp_path / "results", 1)["busy"]
    kept = json.loads(path.read_text())
    (key, cal), = kept.items()
    assert key.startswith(cpu_id() + "|") and time.time() - cal["at"] < 60 and not cal["busy"]
    path.write_text(json.dumps({key: {**cal, "train_s": 1.0}}))  # a kept one is used as it is
    assert cp.estimate(p, tmp_path / "results", 1)["seconds"] > 100 * est["seconds"]
    path.write_text(json.dumps({key: {**cal, "train_s": 1.0, "at": cal["at"] - cp.CALIBRATION_MAX_AGE_S - 1}}))
    cp.estimate(p, tmp_path / "results", 1)  # too old: measured again
    again = json.loads(path.read_text())[key]
    assert again["train_s"] < 1.0 and again["at"] > cal["at"]


def test_a_partial_reproduce_keeps_the_other_notebooks_runs_in_the_export(in_process, tmp_path):
    """`reproduce --only 01` with the export on re-exports the whole profile's stored runs: a
    notebook it does not select (here 03, whose runs 01 does not share) keeps its runs there."""
    import shutil

    params = _params(tmp_path)
    (params / "03_timing.yaml").write_text(yaml.safe_dump(COMMON | {
        "repeats": 2, "baseline_repeats": 2, "pairs": [["fmnist", 4, 6]], "figure_pairs": [["fmnist", 4, 6]],
        "m": 0.1, "break_round": 2}))  # fmt: skip
    shutil.copytree(in_process / "results", tmp_path / "results")
    kw = dict(params_dir=params, reports_dir=tmp_path / "reports", extra=_extra(tmp_path),
              log=lambda *a, **k: None, threads=1, max_federations=4)  # fmt: skip
    execute("t", only=["01", "03"], export=True, **kw)
    runs = tmp_path / "figures" / "t" / "runs" / "runs.parquet"
    before = set(pd.read_parquet(runs)["key"])
    _, nbs = prepare("t", ["03"], None, REPO_ROOT, params, _extra(tmp_path))
    only_03 = {store_key(c) for c in planned_configs(nbs)["03_timing"]}
    _, nbs = prepare("t", ["01"], None, REPO_ROOT, params, _extra(tmp_path))
    assert only_03 - {store_key(c) for c in planned_configs(nbs)["01_feasibility"]}  # 03 has runs of its own
    assert only_03 <= before
    execute("t", only=["01"], export=True, **kw)
    assert set(pd.read_parquet(runs)["key"]) == before


def test_a_profile_extends_another_by_more_repeats_training_only_those(tmp_path, monkeypatch):
    """A profile with `extends: base` imports base's export and trains only the repeats base's
    runs lack; its Table 2 counts all of them; a bad `extends` is refused before any work."""
    from flcore.runs import runner
    from flcore.studies.reproduce import ParameterError

    one = COMMON | {"warm_start": {"fmnist": 0}, "rounds": 2, "n_train": {"fmnist": 400}}
    nb01 = {"pairs": [["fmnist", 4, 6]], "m_values": [0.0, 0.3], "fig1_pairs": [["fmnist", 4, 6]]}
    params = tmp_path / "params"
    for name, reps, prof in (("base", 1, {"export": True}), ("more", 2, {"export": True, "extends": "base"})):
        (params / name).mkdir(parents=True)
        (params / name / "01_feasibility.yaml").write_text(
            yaml.safe_dump(one | nb01 | {"repeats": reps, "baseline_repeats": reps}))
        (params / name / "profile.yaml").write_text(yaml.safe_dump(prof))
    quiet = dict(only=["01"], threads=1, reports_dir=tmp_path / "reports", log=lambda *a, **k: None)
    execute("base", params_dir=params / "base", extra={"output_dir": str(tmp_path / "figures"),
            "results": str(tmp_path / "results-a")}, **quiet)  # fmt: skip
    assert (tmp_path / "figures" / "base" / "runs" / "runs.parquet").exists()

    # another store (a fresh machine): the dry run imports base's export and counts 1 repeat each
    lines: list[str] = []
    extra = {"output_dir": str(tmp_path / "figures"), "results": str(tmp_path / "results-b")}
    execute("more", params_dir=params / "more", extra=extra, dry_run=True,
            **(quiet | {"log": lambda *a, **k: lines.append(" ".join(map(str, a)))}))  # fmt: skip
    text = "\n".join(lines)
    assert "base/runs: 2 runs imported" in text, text
    assert "2 of them extend a stored run" in text and "4 experiment-rounds" in text, text

    trained: list[list[int]] = []
    real = runner.simulate

    def spy(cfg, plan, progress=None, feds=None, checkpoint=None):
        trained.append([j for _, _, j in feds])
        return real(cfg, plan, progress, feds=feds, checkpoint=checkpoint)

    monkeypatch.setattr(runner, "simulate", spy)
    execute("more", params_dir=params / "more", extra=extra, **quiet)
    assert trained and all(j == 1 for js in trained for j in js), trained  # repeat 0 came from base
    t2 = pd.read_csv(tmp_path / "figures" / "more" / "table2_source_recall_loss.csv")
    assert (t2["runs"] == 2).all(), t2

    (params / "more" / "profile.yaml").write_text(yaml.safe_dump({"extends": "nowhere"}))
    with pytest.raises(ParameterError, match="'nowhere' is not another profile"):
        execute("more", params_dir=params / "more", extra=extra, dry_run=True, **quiet)
