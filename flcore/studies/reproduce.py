"""`python -m flcore reproduce`: plan, compute and render the workbook's notebooks.

    python -m flcore reproduce --profile P [--only 01,03] [--device auto|cpu|cuda]
        [--local-cluster N | --scheduler tcp://host:8786] [--dry-run | --export-only] [--threads T]

plan:    the configurations every selected notebook needs, from `params/<profile>/NN_*.yaml`
         and the notebook's own defaults, without training (`flcore.studies.plan`);
         `--dry-run` prints them with what is stored and an estimated wall time, and stops.
compute: the pending configurations as stacks (`flcore.runs.compute`), in this process or one
         Dask task per stack; every finished stack is stored, so a killed compute resumes
         (a stack stopped part-way from its last checkpoint, flcore.runs.checkpoint);
         `--export-only` writes the export of the store as it is (runs and checkpoints).
render:  papermill executes each notebook into `reports/<profile>/` (plus an HTML export),
         figures and tables go to `figures/<profile>/`; training is forbidden here, so a
         notebook that needs a run the store lacks stops naming it.

A profile with `export: true` in `params/<profile>/profile.yaml` keeps its runs in
`figures/<profile>/runs/` (Parquet), written after every stack and imported before planning:
a computation continues on another machine and anyone re-renders without training.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("quick", "paper")  # every notebook has a YAML in these; other params/<name>/ folders
# (e.g. params/defense-cifar/) are extra profiles that run the notebooks they have a YAML for


def profiles(root: Path = REPO_ROOT) -> list[str]:
    """The profiles: params/<name>/ folders holding notebook YAML files (quick and paper first)."""
    extra = sorted(p.name for p in (root / "params").iterdir()
                   if p.is_dir() and p.name not in PROFILES and any(p.glob("[0-9][0-9]_*.yaml")))  # fmt: skip
    return list(PROFILES) + extra


class ParameterError(ValueError):
    """A parameter file names a parameter that the notebook does not have."""


def notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """The workbook's numbered notebooks (01_… onward; 00_explore is interactive only)."""
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00"))


def notebook_parameters(path: Path) -> dict:
    """The names and default values of the notebook's `parameters` cell (read with `ast`:
    papermill's own inspection skips lines whose comments it cannot parse)."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
            return out
    raise ParameterError(f"{path.name}: no cell tagged 'parameters'")


def load_parameters(yaml_path: Path | None, notebook: Path, **extra) -> dict:
    """Parameters from a YAML file (may be absent) plus `extra`, checked against the notebook.

    Raises ParameterError naming an unknown parameter and the closest known one (papermill
    itself would only warn and run with the default).
    """
    import yaml

    params = {}
    if yaml_path is not None and yaml_path.exists():
        params = yaml.safe_load(yaml_path.read_text()) or {}
        if not isinstance(params, dict):
            raise ParameterError(f"{yaml_path}: expected a mapping of parameter names to values")
    params.update({k: v for k, v in extra.items() if v is not None})
    known = notebook_parameters(notebook)
    for name in params:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            where = f"{yaml_path}" if yaml_path is not None else "parameters"
            raise ParameterError(f"{where}: unknown parameter {name!r} for {notebook.name}{hint} "
                                 f"(its parameters: {', '.join(known)})")  # fmt: skip
    return params


def export_html(executed: Path) -> Path:
    import nbconvert
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def _failed_cell(executed: Path) -> str:
    """The source and error of the first cell with an error output in an executed notebook."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # noqa: BLE001 - the notebook may not have been written
        return ""
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                return (f"cell {i}:\n{c.source}\n--> {o.get('ename')}: {o.get('evalue')}")
    return ""


def profile_settings(profile: str, params_dir: Path) -> dict:
    """`params/<profile>/profile.yaml` (optional): settings of the profile as a whole.

    export: true      the runs are exported to figures/<profile>/runs/ (Parquet, committed)
                      after every finished stack, and imported from there before planning
    max_federations:  at most this many federations per stack (default: the dataset's cap);
                      a long compute stores its work in smaller steps
    threads:          torch threads per stack (default: this machine's); the thread count
                      changes fp32/bf16 rounding, so a profile computed on many machines pins it
    report:           a Markdown file written from the stored runs after rendering
                      (flcore.studies.report), e.g. docs/REPRODUCTION.md
    compare_with:     another profile whose Table 2 and Table 4 cells the report sets beside
                      this one's (e.g. the same runs with the authors' client state)
    more_repeats:     another profile running this one's Table 2 cells with more repeats,
                      whose cells the report gives in a section of their own as they are stored
    extends:          profiles (a name or a list) whose committed exports are imported before
                      planning: where they hold the same configurations with fewer repeats,
                      only the missing repeats train (e.g. 10 repeats on top of 3)
    """
    import yaml

    path = params_dir / "profile.yaml"
    if not path.exists():
        return {}
    d = yaml.safe_load(path.read_text()) or {}
    allowed = {"export", "max_federations", "threads", "report", "description", "compare_with", "extends",
               "more_repeats"}
    bad = sorted(set(d) - allowed) if isinstance(d, dict) else ["(not a mapping)"]
    if bad:
        raise ParameterError(f"{path}: unknown setting {bad[0]!r} (valid: {', '.join(sorted(allowed))})")
    ext = d.get("extends", [])
    ext = [ext] if isinstance(ext, str) else ext
    known = {p.name for p in params_dir.parent.iterdir() if p.is_dir() and any(p.glob("[0-9][0-9]_*.yaml"))}
    for name in ext if isinstance(ext, list) else [ext]:
        if not isinstance(name, str) or name not in known or name == profile:
            raise ParameterError(f"{path}: extends: {name!r} is not another profile (one of: "
                                 f"{', '.join(sorted(known - {profile}))})")  # fmt: skip
    if "extends" in d:
        d["extends"] = ext
    return d


def prepare(profile: str, only: list[str] | None = None, device: str | None = None,
            root: Path = REPO_ROOT, params_dir: Path | None = None, extra: dict | None = None):  # fmt: skip
    """The notebooks to run and their parameters, checked; raises ParameterError before any
    work. Returns (out_name, [(notebook, papermill parameters, every parameter)])."""
    params_dir = params_dir or root / "params" / profile
    # a seed other than the profile's: outputs go to <profile>-seed<N>, never over the profile's
    seed = (extra or {}).get("seed")
    out_name = profile if seed is None else f"{profile}-seed{seed}"
    nbs = notebooks(root)
    if profile not in PROFILES:  # an extra profile runs the notebooks it has parameters for
        nbs = [p for p in nbs if (params_dir / f"{p.stem}.yaml").exists()]
    _selected(nbs, only)  # an unknown notebook fails before any parameter file is read
    plan = []
    for nb in nbs:
        y = params_dir / f"{nb.stem}.yaml"
        given = load_parameters(y, nb, device=device, **{**(extra or {}), "profile": out_name})
        plan.append((nb, given, notebook_parameters(nb) | given))
    return out_name, select(plan, only)


def _selected(nbs: list[Path], only: list[str] | None) -> list[Path]:
    if not only:
        return nbs
    unknown = [o for o in only if not any(p.name.startswith(o) for p in nbs)]
    if unknown:
        raise ParameterError(f"--only {','.join(unknown)}: no such notebook (have: "
                             f"{', '.join(p.name.split('_')[0] for p in nbs)})")  # fmt: skip
    return [p for p in nbs if any(p.name.startswith(o) for o in only)]


def select(plan, only: list[str] | None):
    """The entries of `prepare`'s plan whose notebooks `only` names (all of them without it)."""
    keep = set(_selected([nb for nb, _, _ in plan], only))
    return [e for e in plan if e[0] in keep]


def planned_configs(plan) -> dict[str, list]:
    """notebook stem -> the configurations it runs (flcore.studies.plan); raises
    ParameterError for parameters no configuration can be made of."""
    from flcore.config import ConfigError
    from flcore.studies.plan import configs

    out = {}
    for nb, _, full in plan:
        try:
            out[nb.stem] = configs(nb.stem, full)
        except (ConfigError, ValueError) as e:
            raise ParameterError(f"{nb.name}: {e}") from None
    return out


def _store_of(plan) -> Path:
    from flcore.studies.experiments import repo_path

    stores = {str(repo_path(full["results"])) for _, _, full in plan}
    if len(stores) > 1:
        raise ParameterError(f"the notebooks name different result stores ({', '.join(sorted(stores))}); "
                             "give them one `results` so that shared runs train once")  # fmt: skip
    return Path(stores.pop())


def _figures_of(plan, out_name: str, root: Path) -> Path:
    from flcore.studies.experiments import repo_path

    outs = {str(repo_path(full["output_dir"])) for _, _, full in plan} or {str(root / "figures")}
    return Path(sorted(outs)[0]) / out_name


def execute(profile: str, only: list[str] | None = None, device: str | None = None,
            root: Path = REPO_ROOT, params_dir: Path | None = None, reports_dir: Path | None = None,
            extra: dict | None = None, log=print, executor=None, threads: int | None = None,
            dry_run: bool = False, export: bool | None = None, export_only: bool = False,
            max_federations: int | None = None) -> list[Path]:  # fmt: skip
    """Plan, compute and render a profile; returns the files written. Raises on the first failure.

    plan:    every notebook's configurations from its parameters (flcore.studies.plan),
             after importing the profile's committed export if it has one;
    compute: the pending ones as stacks (flcore.runs.compute), here or on `executor` (a
             dask.distributed.Client); a killed compute resumes where it stopped;
    render:  papermill executes the notebooks with training forbidden: each reads its runs
             from the store, and one that would have to train stops naming the configuration.
    dry_run: print the plan (and an estimated wall time) and stop.
    export_only: write the export of what the store holds now (runs, and checkpoints of
    stacks stopped part-way) to figures/<profile>/runs/ and stop: before handing a stopped
    compute to another machine.
    """
    params_dir = params_dir or root / "params" / profile
    settings = profile_settings(profile, params_dir)
    out_name, whole = prepare(profile, None, device, root, params_dir, extra)
    plan = select(whole, only)
    export = settings.get("export", False) if export is None else export
    max_federations = max_federations or settings.get("max_federations")
    threads = threads or settings.get("threads")
    store = _store_of(plan) if plan else root / "results"
    figures = _figures_of(plan, out_name, root)
    runs_dir = figures / "runs"

    from flcore.runs import compute as cp

    # the exports of the profiles this one extends first (their runs are the first repeats of
    # this one's), then its own
    for src in [figures.parent / name / "runs" for name in settings.get("extends", [])] + [runs_dir]:
        if not (src / "runs.parquet").exists():
            continue
        from flcore.runs.export import import_runs

        st = import_runs(src, store)
        log(f"import {src}: {st['imported']} runs imported, {st['present']} already stored, "
            f"{st['stale']} stale (computed by code with other numbers; skipped)"
            + (f"; {st['checkpoints']} stopped stacks resume from the export's checkpoints" if st["checkpoints"] else ""))  # fmt: skip
    per_nb = planned_configs(plan)
    everything = [c for cs in per_nb.values() for c in cs]
    full_plan = cp.plan(everything, store, max_federations)
    if dry_run:
        _print_plan(profile, per_nb, full_plan, store, threads, log, _workers(executor))
        return []

    from flcore.runs.runner import resolved, store_key

    # The export holds the whole profile's runs, whatever `only` selects: a partial run must
    # not drop the other notebooks' runs from the committed export.
    if only:
        export_keys = list(dict.fromkeys(store_key(resolved(c)) for cs in planned_configs(whole).values() for c in cs))
    else:
        export_keys = [store_key(c) for c in full_plan.configs]

    def save_export(_stack=None):
        from flcore.runs.export import export_runs

        return export_runs(store, export_keys, runs_dir)

    if export_only:
        ex = save_export()
        log(f"export {runs_dir}: {ex['runs']} runs, {ex['checkpoints']} checkpoints of stacks stopped "
            f"part-way, {ex['bytes'] / 1e6:.1f} MB")  # fmt: skip
        return sorted(runs_dir.glob("*.parquet")) + sorted((runs_dir / "checkpoints").glob("*.pt"))

    cp.compute(everything, store, executor, threads=threads, max_federations=max_federations,
               progress=True, on_stack=save_export if export else None, log=log)  # fmt: skip
    if export:
        save_export()
    written = render(plan, out_name, root, reports_dir, log) + (sorted(runs_dir.glob("*.parquet")) if export else [])
    if settings.get("report") and not only and not (extra or {}).get("seed"):
        from flcore.studies.report import write

        written.append(write(profile, root / settings["report"], root, log=log))
    return written


def render(plan, out_name: str, root: Path = REPO_ROOT, reports_dir: Path | None = None, log=print,
           jobs: int | None = None) -> list[Path]:  # fmt: skip
    """papermill over the prepared notebooks, every run read from the store (training
    forbidden), `jobs` notebooks at a time (default: one per core)."""
    from concurrent.futures import ThreadPoolExecutor

    import papermill

    from flcore.runs.runner import RENDER_ONLY_ENV

    reports_dir = reports_dir or root / "reports" / out_name
    reports_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = _figures_of(plan, out_name, root)
    before = {p: p.stat().st_mtime for p in figures.glob("*")} if figures.exists() else {}
    t_all = time.perf_counter()
    old = os.environ.get(RENDER_ONLY_ENV)
    os.environ[RENDER_ONLY_ENV] = "1"  # the kernels inherit it
    def one(nb, params) -> list[Path]:
        target = reports_dir / nb.name
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(target), parameters=params, cwd=str(root),
                                       progress_bar=False, kernel_name="python3")  # fmt: skip
        except papermill.PapermillExecutionError as e:
            cell = _failed_cell(target)
            raise RuntimeError(f"{nb.name} failed after {time.perf_counter() - t0:.0f} s (partial output: "
                               f"{target})\n{cell or e.ename + ': ' + e.evalue}") from None  # fmt: skip
        except Exception as e:  # noqa: BLE001 - e.g. a dead kernel: report it like a failed cell
            raise RuntimeError(f"{nb.name} failed after {time.perf_counter() - t0:.0f} s (partial output: "
                               f"{target}): {type(e).__name__}: {e}") from None  # fmt: skip
        html = export_html(target)
        log(f"  {nb.name} done in {time.perf_counter() - t0:.0f} s")
        return [target, html]

    # Each notebook runs in its own kernel process, mostly single-threaded Python (loading
    # stored runs, tables, figures), so `jobs` of them at once use that many cores.
    jobs = max(1, min(jobs or (os.cpu_count() or 1), len(plan)))
    log(f"rendering {len(plan)} notebooks, {jobs} at a time")
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, nb, params) for nb, params, _ in plan]
            for f in futures:  # in plan order; the first failure is raised after the others end
                written += f.result()
    finally:
        if old is None:
            os.environ.pop(RENDER_ONLY_ENV, None)
        else:
            os.environ[RENDER_ONLY_ENV] = old
    if figures.exists():
        written += sorted(p for p in figures.glob("*") if p.is_file() and before.get(p) != p.stat().st_mtime)
    log(f"all {len(plan)} notebooks in {time.perf_counter() - t_all:.0f} s")
    return written


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _workers(executor) -> tuple[int, int | None]:
    """Stacks computed at once (1 in this process; one per Dask worker thread) and the cores
    they share: this machine's when every worker is on it (loopback), else unknown (None)."""
    if executor is None:
        return 1, os.cpu_count()
    from distributed.comm import get_address_host

    info = executor.scheduler_info()["workers"]
    local = all(_is_this_machine(get_address_host(addr)) for addr in info)
    return max(1, sum(w.get("nthreads", 1) for w in info.values())), os.cpu_count() if local else None


def _is_this_machine(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine: a loopback address, or one of
    its network interfaces' (a LocalCluster may listen on either)."""
    import ipaddress
    import socket

    import psutil  # a dependency of Dask's

    try:
        ip = ipaddress.ip_address(socket.gethostbyname(host))
    except (OSError, ValueError):
        return False
    mine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return ip.is_loopback or str(ip) in mine


def _print_plan(profile, per_nb: dict, full_plan, store: Path, threads, log,
                workers: tuple[int, int | None] = (1, None)) -> None:  # fmt: skip
    from flcore.runs import compute as cp
    from flcore.runs.runner import store_key
    from flcore.sim.device import cpu_id

    stored = {store_key(c) for c in full_plan.stored}
    log(f"profile {profile}: plan (store {store})")
    log(f"  {'notebook':24s} {'configs':>8s} {'federations':>12s} {'exp-rounds':>11s} {'stored':>7s} {'pending':>8s}")
    for stem, cs in per_nb.items():
        uniq = {store_key(c): c for c in cs}
        n_st = sum(k in stored for k in uniq)
        log(f"  {stem:24s} {len(uniq):8d} {sum(c.repeats for c in uniq.values()):12d} "
            f"{sum(cp.experiment_rounds(c) for c in uniq.values()):11d} {n_st:7d} {len(uniq) - n_st:8d}")  # fmt: skip
    p = full_plan
    log(f"  {'all (distinct)':24s} {len(p.configs):8d} {p.federations:12d} {p.total_rounds:11d} "
        f"{len(p.stored):7d} {len(p.pending):8d}")  # fmt: skip
    log(f"pending: {len(p.pending)} configurations in {len(p.stacks)} stacks, {len(p.warmups)} warm-ups "
        f"first; {p.pending_rounds} experiment-rounds")  # fmt: skip
    if p.extends:
        held = sum(c.rounds * p.extends[store_key(c)] for c in p.pending if store_key(c) in p.extends)
        log(f"  {len(p.extends)} of them extend a stored run of the same configuration with fewer "
            f"repeats: only the missing repeats train ({held} experiment-rounds already stored)")  # fmt: skip
    saved = [(stack, cp.saved_share(stack, p, store)) for stack in p.stacks]
    saved = [(stack, f) for stack, f in saved if f > 0]
    if saved:
        saved.sort(key=lambda sf: -sf[1])
        done = sum(round(f * sum(p.rounds_to_train(c) for c in stack)) for stack, f in saved)
        log(f"  {len(saved)} stacks were stopped part-way and resume from their checkpoints, before the "
            f"others: saved at round {', '.join(str(round(f * st[0].rounds)) for st, f in saved)} of "
            f"{saved[0][0][0].rounds} ({done} of the experiment-rounds above already trained)")  # fmt: skip
    for stack in p.stacks[:3]:
        log(f"  e.g. a stack of {sum(p.to_train(c) for c in stack)} federations: {len(stack)} configs, "
            f"{stack[0].dataset}, {stack[0].rounds} rounds, {stack[0].precision}")  # fmt: skip
    if not p.pending_rounds:
        log("estimated wall time here: 0 s (everything is stored)")
        return
    n, cores = workers
    est = cp.estimate(p, store, threads, log=log, workers=n, cores=cores)
    rates = "; ".join(f"{k}: {v:.3g} s per experiment-round" for k, v in est["per_round"].items())
    where = "in this process" if n == 1 else f"on {n} workers at once"
    if est["oversubscribed"] > 1:
        where += f", which share {cores} cores (each stack {est['oversubscribed']:.2g}x slower)"
    elif cores is None:
        where += ", each as fast as this machine"
    log(f"estimated wall time here: {_hms(est['seconds'])} {where} ({cpu_id()}, {est['threads']} torch "
        f"threads per stack; calibrated {rates}; one after the other: {_hms(est['serial_seconds'])})")  # fmt: skip


def cmd_reproduce(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flcore reproduce",
                                description="Plan, compute and render the workbook's notebooks (papermill).")  # fmt: skip
    p.add_argument("--profile", default="quick", choices=profiles(),
                   help="quick: minutes on a CPU; paper: the paper's full setting (GPU/cluster); "
                        "others: the params/<name>/ folders, running the notebooks they have")  # fmt: skip
    p.add_argument("--seed", type=int, default=None,
                   help="run with this seed instead of the profile's (a fresh-seed check); "
                        "outputs go to figures/<profile>-seed<N>/ and reports/<profile>-seed<N>/")  # fmt: skip
    p.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,03")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"),
                   help="override the notebooks' device parameter")  # fmt: skip
    what = p.add_mutually_exclusive_group()
    what.add_argument("--dry-run", action="store_true",
                      help="print the configurations, federations, experiment-rounds, what is stored "
                           "and an estimated wall time here (a short calibration); train nothing")  # fmt: skip
    what.add_argument("--export-only", action="store_true",
                      help="write figures/<profile>/runs/ from the store as it is (stored runs, and "
                           "checkpoints of stacks stopped part-way) and stop; train nothing")  # fmt: skip
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local-cluster", type=int, metavar="N",
                       help="compute on a Dask LocalCluster of N worker processes on 127.0.0.1")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="compute on a running Dask scheduler, e.g. tcp://host:8786 (the "
                            "result store must be a path every worker reaches)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per stack (default: this machine's torch default); the "
                        "thread count changes fp32/bf16 rounding, so keep it to compare runs")  # fmt: skip
    p.add_argument("--max-federations", type=int, default=None,
                   help="at most N federations per stack (default: the profile's, else the dataset's cap)")
    p.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                   help="write the runs to figures/<profile>/runs/ (default: the profile's setting)")
    a = p.parse_args(argv)
    only = [o.strip() for o in a.only.split(",") if o.strip()] if a.only else None
    for flag, v in (("--seed", a.seed), ("--local-cluster", a.local_cluster), ("--threads", a.threads),
                    ("--max-federations", a.max_federations)):  # fmt: skip
        if v is not None and v < (0 if flag == "--seed" else 1):
            print(f"error: {flag} {v}: give {'a seed >= 0' if flag == '--seed' else 'at least 1'}",
                  file=sys.stderr)  # fmt: skip
            return 2
    from flcore.config import ConfigError

    kw = dict(extra={"seed": a.seed} if a.seed is not None else None, threads=a.threads,
              dry_run=a.dry_run, export=a.export, export_only=a.export_only,
              max_federations=a.max_federations)  # fmt: skip
    try:
        if a.local_cluster or a.scheduler:
            from flcore.runs.sweep import _client

            with _client(a.scheduler, a.local_cluster) as client:
                print(f"dask scheduler: {client.scheduler.address}", file=sys.stderr)
                written = execute(a.profile, only, a.device, executor=client, **kw)
        else:
            written = execute(a.profile, only, a.device, **kw)
    except (ParameterError, ConfigError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    if written:
        print("written:")
    for w in written:
        try:
            print(f"  {w.relative_to(REPO_ROOT)}")
        except ValueError:
            print(f"  {w}")
    return 0
