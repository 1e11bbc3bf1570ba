"""Mid-training checkpoints: a killed training resumes at its last saved round.

A paper-scale stack trains for about an hour on two CPU cores (docs/PERFORMANCE.md), so a
compute that is stopped (a session's end, a preempted cluster node, Ctrl-C) would otherwise
lose up to an hour per worker. While a stack of the fast engine trains with a result store,
the engine saves its whole state every `every_s` seconds (default `CHECKPOINT_EVERY_S`, or
the environment variable `FLCORE_CHECKPOINT_S`; 0 saves after every round) to

    <store>/_checkpoints/<stack id>.pt

and the next training of the same stack starts from there. The state is everything the engine
carries from round to round: the global models, the participants' momentum buffers
(`client_state="persistent"`), the metrics so far, and the aggregator's side (who was
excluded, each federation's defense and rule state). Every random draw is keyed by the round
(flcore.sim.plan), so a resumed stack gives the numbers of one that never stopped; a test pins
this bit for bit.

The stack id is a hash of its members' store keys, in stack order (and, for a stack that
extends stored runs by more repeats, the first repeat each member trains), so a checkpoint is
only ever resumed by the same configurations training the same federations, on the same device kind and precision, with the same
flcore and numerics versions: code that changes the numbers starts afresh. The file is written
to a temporary name, fsynced and renamed, so a kill while saving leaves the previous
checkpoint (and a temporary file, removed by the next training of that stack once it is an
hour old); an unreadable one is set aside with a warning and the stack starts from round 1.
The runner deletes the checkpoint once every member is stored. The folder holds nothing else
and can be deleted at any time (its stacks then start afresh); the store's listing ignores it.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

CHECKPOINT_DIR = "_checkpoints"
CHECKPOINT_EVERY_S = 300.0
CHECKPOINT_ENV = "FLCORE_CHECKPOINT_S"


def every_s() -> float:
    """Seconds between two saves: `FLCORE_CHECKPOINT_S` if set, else `CHECKPOINT_EVERY_S`."""
    raw = os.environ.get(CHECKPOINT_ENV)
    if raw is None or raw == "":
        return CHECKPOINT_EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise ValueError(f"{CHECKPOINT_ENV}={raw!r}: give the seconds between two checkpoints as a "
                         f"number >= 0 (0: after every round), or unset it for {CHECKPOINT_EVERY_S:g}")  # fmt: skip
    return value


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints in `folder` (`<stack id>.pt`), sorted; not the temporary file of a save
    that a kill cut short."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.pt") if not p.name.startswith(".")) if folder.is_dir() else []


def header(path: str | os.PathLike) -> dict | None:
    """A checkpoint file's member keys, first trained repeats (None: all) and saved round; None
    if it is unreadable. The file is mapped, not read: its tensors (for persistent CIFAR-10
    clients, a gigabyte of momentum) stay on disk."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return {"keys": list(state["keys"]), "first": state.get("first"), "round": int(state["round"])}
    except Exception:  # noqa: BLE001 - damaged: neither resumed first, exported nor imported
        return None


def saved_round(store_path: str | os.PathLike, keys: list[str], first: list[int] | None = None) -> int:
    """The round up to which the stack of these members (and first trained repeats) is saved
    in the store's checkpoints; 0 if it has none, or none it would resume."""
    first = [int(r) for r in first] if first is not None and any(first) else None
    path = Path(store_path) / CHECKPOINT_DIR / f"{stack_id(list(keys), first)}.pt"
    info = header(path) if path.exists() else None
    if info is None or info["keys"] != list(keys) or info["first"] != first:
        return 0
    return info["round"]


def stack_id(keys: list[str], first: list[int] | None = None) -> str:
    """The id of a stack whose members have these store keys, in stack order; `first`: the
    first repeat each member trains (all 0, or None: every repeat; the id of such a stack is
    the hash of its keys alone, as before extensions existed)."""
    text = "\n".join(keys)
    if first is not None and any(first):
        text += "\nfirst repeats " + ",".join(str(int(r)) for r in first)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class Checkpoint:
    """The checkpoint file of one stack (see the module docstring); the engine's `checkpoint=`."""

    def __init__(self, store_path: str | os.PathLike, keys: list[str], every: float | None = None,
                 first: list[int] | None = None) -> None:  # fmt: skip
        self.keys = list(keys)
        self.first = [int(r) for r in first] if first is not None and any(first) else None
        self.path = Path(store_path) / CHECKPOINT_DIR / f"{stack_id(self.keys, self.first)}.pt"
        self.every = every_s() if every is None else float(every)
        self.started = time.perf_counter()
        self.last = self.started
        self.wall_before = 0.0  # seconds the stack trained before this process resumed it
        # the same in CPU seconds of its process, which a stopped process (SIGSTOP) does not
        # spend; None: resumed from a checkpoint saved before checkpoints recorded it
        self.cpu_started = time.process_time()
        self.cpu_before: float | None = 0.0
        self.resumed_at = 0  # the round it resumed after (0: it started afresh)

    def load(self, device) -> dict | None:
        """The saved state, with tensors on `device`; None if there is none (or it is unreadable
        or of other configurations: then it is set aside)."""
        for tmp in self.path.parent.glob(f".tmp-{self.path.stem}-*.pt"):  # a save cut by a kill
            try:
                if time.time() - tmp.stat().st_mtime > 3600:  # a save takes a second or so
                    tmp.unlink()
            except OSError:
                pass
        if not self.path.exists():
            return None
        import torch

        try:
            state = torch.load(self.path, map_location=device, weights_only=False)
            if state.get("keys") != self.keys:
                raise ValueError("it belongs to other configurations")
            if state.get("first") != self.first:
                raise ValueError("it trains other repeats of these configurations")
        except Exception as exc:  # a damaged file must not stop the training: start afresh
            aside = self.path.with_suffix(f".unreadable-{int(time.time())}")
            try:
                self.path.rename(aside)
            except OSError:
                aside = self.path
            warnings.warn(f"checkpoint {self.path} cannot be resumed ({exc}); moved to {aside.name}, "
                          "the stack trains from round 1", stacklevel=2)  # fmt: skip
            return None
        self.wall_before, self.resumed_at = float(state["wall_s"]), int(state["round"])
        self.cpu_before = None if state.get("cpu_s") is None else float(state["cpu_s"])
        return state

    def due(self) -> bool:
        """Whether to save after the round just trained: `every` seconds have passed since the
        last save (the engine never asks after the last round: its results are stored then)."""
        return time.perf_counter() - self.last >= self.every

    def save(self, state: dict) -> None:
        """Write `state` (the engine's) atomically: a temporary file, fsync, rename."""
        import torch

        now = time.perf_counter()
        cpu = None if self.cpu_before is None else self.cpu_before + time.process_time() - self.cpu_started
        state = dict(state, keys=self.keys, first=self.first, wall_s=self.wall_before + now - self.started, cpu_s=cpu)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".tmp-{self.path.stem}-{os.getpid()}.pt")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.last = now

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
