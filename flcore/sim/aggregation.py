"""The aggregator's side of a round, shared by both engines: defense, then the rule.

`Aggregation` is the one place where either engine calls a defense (`Defense.filter`) and
an aggregation rule (`Aggregator`); it knows neither by name. It is called with the stacked
global state `[R', ...]` and the k returned models of each of R' federations `[R', k, ...]`
and returns the new global state. Plain FedAvg without a defense is a mean over the model
dimension; other rules act on the flattened updates `[k, P]` of all floating-point state.
A round whose participants are all excluded leaves the global model unchanged. A rule with a
root set (`root_size() > 0`, FLTrust) also gets the server's update, from the server models
`[R', ...]` the engine trained on the root sets (`server`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from flcore.config import Config
from flcore.defenses.aggregators import RoundInfo
from flcore.defenses.base import Federation, RoundUpdates
from flcore.sim.models import last_linear_weight_name
from flcore.sim.plan import Plan


class Aggregation:
    def __init__(self, cfg: Config, feds: list[tuple[Config, Plan, int]], float_names: list[str]):
        """feds: the stacked federations (config, plan, repeat), in stack order; they share
        `cfg`'s aggregation and defense settings (`run_many` batches only such configs)."""
        self.cfg, self.feds, self.fkeys = cfg, feds, float_names
        self.rule = cfg.build_aggregator()
        self.defense = cfg.build_defense()
        self.plain = cfg.aggregator == "fedavg" and self.defense is None
        self.root_size = self.rule.root_size()  # > 0: the engine trains a server model too
        self.w_name = last_linear_weight_name(cfg.dataset)
        self.excluded: list[tuple[int, int, int, bool]] = []
        self.rule_state: list | None = None  # a stateful rule's state per federation
        self.defense_state = None
        if self.defense is not None:
            self.defense_state = [
                self.defense.start(Federation(c.num_participants, c.k, c.num_classes, c.src, c.seed, j))
                for c, _, j in feds
            ]

    def state_dict(self) -> dict:
        """What the aggregator's side carries from round to round (for a checkpoint): who was
        excluded when, each federation's defense state (`Defense.start`) and rule state
        (`Aggregator.init`). Rules and defenses keep their cross-round state there only."""
        return {"excluded": list(self.excluded), "rule_state": self.rule_state,
                "defense_state": self.defense_state}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.excluded = list(state["excluded"])
        self.rule_state, self.defense_state = state["rule_state"], state["defense_state"]

    def excluded_frame(self, feds: range | None = None) -> pd.DataFrame | None:
        """Who was excluded when: repeat (within its config), round, participant, malicious
        (the truth, recorded for evaluation only). feds: these federations only."""
        if self.defense is None:
            return None
        rows = [(self.feds[i][2], r, p, mal) for i, r, p, mal in self.excluded if feds is None or i in feds]
        df = pd.DataFrame(rows, columns=["repeat", "round", "participant", "malicious"]).astype(
            {"repeat": np.int64, "round": np.int64, "participant": np.int64, "malicious": bool}
        )  # one order whatever the engine's loop order: by repeat, round, participant
        return df.sort_values(["repeat", "round", "participant"], kind="stable").reset_index(drop=True)

    def __call__(self, rnd: int, glob: dict, local: dict, repeats: list[int], server: dict | None = None) -> dict:
        """glob: name -> [R', ...]; local: name -> [R', k, ...] for the federations `repeats`
        (indices into `feds`); server: name -> [R', ...], the server models trained on the
        root sets this round (only with `root_size > 0`)."""
        if self.root_size and server is None:
            raise ValueError(f"aggregator {self.cfg.aggregator!r} needs the server's update on its root "
                             "set: the engine must train the server models and pass server=")  # fmt: skip
        if self.plain:
            return {kk: (v.mean(1) if kk in self.fkeys else v[:, 0]) for kk, v in local.items()}
        k = self.cfg.k
        out_delta = local[self.w_name] - glob[self.w_name].unsqueeze(1)  # [R', k, C, F]
        flat_g = torch.cat([glob[kk].reshape(len(repeats), -1) for kk in self.fkeys], 1)
        flat_l = torch.cat([local[kk].reshape(len(repeats), k, -1) for kk in self.fkeys], 2)
        upd = flat_l - flat_g.unsqueeze(1)
        if server is not None:
            upd_s = torch.cat([server[kk].reshape(len(repeats), -1) for kk in self.fkeys], 1) - flat_g
        new_flat = flat_g.clone()
        if self.rule.stateful and self.rule_state is None:
            out_dim = out_delta[0, 0].numel()
            self.rule_state = [self.rule.init(c.num_participants, out_dim, upd) for c, _, _ in self.feds]
        for i, j in enumerate(repeats):
            c, pl, jj = self.feds[j]
            ids = pl.selected[jj, rnd - 1]
            weights = np.ones(k)
            if self.defense is not None:
                weights = np.asarray(self.defense.filter(
                    self.defense_state[j], rnd, RoundUpdates(ids, out_delta[i], glob[self.w_name][i], upd[i])),
                    dtype=np.float64)  # fmt: skip
                self._record(j, rnd, ids, weights)
            keep = weights > 0
            if not keep.any():
                continue
            keep_t = torch.as_tensor(keep, device=upd.device)
            w = None if (weights[keep] == 1).all() else torch.as_tensor(weights[keep])
            info = {}
            if self.rule.uses_round:
                info["info"] = RoundInfo(c.seed, jj, rnd, c.warm_start + rnd,
                                         None if server is None else upd_s[i])  # fmt: skip
            agg = self.rule(upd[i][keep_t], weights=w, **info,
                            state=None if self.rule_state is None else self.rule_state[j], ids=ids[keep],
                            out_rows=out_delta[i][keep_t].reshape(int(keep.sum()), -1))  # fmt: skip
            if agg is not None:
                new_flat[i] += agg
        new, offset = {}, 0
        for kk, v in local.items():
            if kk in self.fkeys:
                n = v[0, 0].numel()
                new[kk] = new_flat[:, offset : offset + n].reshape(v.shape[0], *v.shape[2:]).contiguous()
                offset += n
            else:
                new[kk] = v[:, 0]
        return new

    def _record(self, j: int, rnd: int, ids: np.ndarray, weights: np.ndarray) -> None:
        if len(weights) != len(ids):
            raise ValueError(f"defense {self.cfg.defense!r} returned {len(weights)} weights for "
                             f"{len(ids)} participants: one weight per selected participant")  # fmt: skip
        _, pl, jj = self.feds[j]
        for p in ids[weights <= 0]:
            self.excluded.append((j, rnd, int(p), bool(pl.is_malicious[jj, p])))
