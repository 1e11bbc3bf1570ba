"""One experiment's configuration, validated up front.

`Config` holds everything that determines a run's numbers. It is checked completely when it
is made, nested option dicts included (`attack_params`, `defense_params`,
`aggregator_params`, each against its extension's `Params` dataclass), and every error names
the bad value, what is allowed and the fix, so a sweep never dies hours in on a typo and the
command line exits 2 before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from flcore.attacks import ATTACKS
from flcore.core.errors import ConfigError, MeanEquivalentWarning, suggest
from flcore.core.numerics import dataset_revision
from flcore.data.specs import DATASETS
from flcore.defenses import AGGREGATORS, DEFENSES

STRATEGIES = ("random", "early", "late", "availability")
PARTITIONS = ("iid", "dirichlet")
PRECISIONS = ("auto", "fp32", "bf16", "fp64")  # fp64: for verifying the engines against each other
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("fast", "reference")
RECORD_UPDATES = ("none", "source", "all")
CLIENT_STATES = ("stateless", "persistent")
TRAINING_DEFAULTS = ("batch_size", "lr", "momentum", "lr_step", "lr_gamma")  # from the dataset spec
LR_MIN = 1e-10
NUM_CLASSES = 10  # both built-in datasets; a Config's own count is `Config.num_classes`

__all__ = ["Config", "ConfigError", "suggest"]

# Fields added after the first stored runs, with the value that reproduces the numbers of the
# code before them. A field at this value is left out of the store key, so a store filled before
# the field existed stays valid (tests/test_golden.py pins that the numbers did not change).
# Every new Config field goes here with its default, unless its default changes the numbers
# (then bump flcore.core.numerics.NUMERICS_VERSION instead). Never remove or edit an entry:
# that would change the keys of the runs stored with the field at this value.
KEY_NEUTRAL: dict[str, Any] = {}


def _outside_stacklevel() -> int:
    """The `stacklevel` of the first caller outside flcore and `dataclasses` (a warning then
    points at the user's line, whether the Config was made directly or by `replace`)."""
    import os
    import sys

    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.abspath(dataclasses.__file__))
    frame, level = sys._getframe(1), 1
    def ours(code) -> bool:  # flcore, dataclasses, or the __init__ dataclasses generates
        return (code.co_filename == "<string>" and code.co_name == "__init__") or os.path.abspath(
            code.co_filename).startswith(inside)  # fmt: skip

    while frame is not None and ours(frame.f_code):
        frame, level = frame.f_back, level + 1
    return level


@dataclass(frozen=True)
class Config:
    """One experiment: a federation, an attack, a selection strategy and its repeats.

    Rounds are numbered 1..rounds. The break round b splits a run for the timing and
    availability studies: "early" lets malicious participants be selected only in rounds
    r < b, "late" and "availability" only in rounds r >= b.
    """

    dataset: str = "fmnist"
    m: float = 0.0  # m%: fraction of malicious participants (paper Table 1), in [0, 1]
    src: int = 4  # c_src: the class whose labels malicious participants flip ...
    tgt: int = 6  # ... into c_tgt
    rounds: int = 200  # R: global rounds
    num_participants: int = 50  # N
    k: int = 5  # participants selected per round
    strategy: str = "random"
    alpha: float | None = None  # α: malicious availability (strategy "availability")
    break_round: int = 75
    repeats: int = 1
    seed: int = 0
    # training (None = the dataset's reference value, flcore.data.specs)
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    lr_step: int | None = None
    lr_gamma: float | None = None
    local_epochs: int = 1
    # "stateless": a fresh SGD optimizer every round, the learning rate by global round (the
    # paper's text). "persistent": the authors' reference code, where each participant keeps
    # one optimizer for the whole run (its momentum survives between its selections) and one
    # step scheduler advanced by its own training calls (lr x lr_gamma every lr_step calls).
    client_state: str = "stateless"
    # data
    partition: str = "iid"
    beta: float = 0.5  # Dirichlet concentration for partition="dirichlet"
    n_train: int | None = None  # class-balanced subset of the training set (None = all)
    n_test: int | None = None  # class-balanced subset of the test set (None = all)
    eval_every: int = 1  # evaluate every this many rounds (the last round always)
    # Evaluated rounds before the last use only the test images of these classes (their
    # recall; M_acc is NaN there): per-round source-recall curves at a fraction of the cost.
    # The last round always uses the whole test set. None: every class in every evaluated round.
    eval_classes: tuple | None = None
    # Warm start: begin every repeat from the clean FedAvg global model after this many rounds
    # (`flcore.engine.pretrain_config`: same data and training settings, m = 0, trained once and
    # kept in the result store). Round r of this run is then round warm_start + r of the
    # federation (learning-rate schedule and random streams). 0: start from initialisation.
    warm_start: int = 0
    keep_model: bool = False  # keep each repeat's final global model in Result.model
    record_updates: str = "none"  # keep each selected participant's output-layer update
    # aggregation and defense
    aggregator: str = "fedavg"
    aggregator_params: dict = field(default_factory=dict)
    defense: str | None = None  # a registered defense (flcore.defenses.DEFENSES), e.g. "pca"
    defense_params: dict = field(default_factory=dict)
    # the attack of malicious participants (flcore.attacks.ATTACKS); label_flip: src -> tgt
    attack: str = "label_flip"
    attack_params: dict = field(default_factory=dict)
    # execution (device and precision change float rounding, so they are part of the key)
    device: str = "auto"
    precision: str = "auto"
    engine: str = "fast"

    def __post_init__(self) -> None:
        # whole numbers in real-valued fields become floats: m=0 and m=0.0 are one experiment
        for name in ("m", "lr", "momentum", "lr_gamma", "beta", "alpha"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))
        if isinstance(self.eval_classes, (list, tuple, set)) and self.eval_classes and all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CLASSES
                for c in self.eval_classes):  # fmt: skip  (else left as given, for the error)
            object.__setattr__(self, "eval_classes", tuple(sorted(set(self.eval_classes))))
        if self.dataset in DATASETS:
            for name, value in DATASETS.get(self.dataset).defaults.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        self._validate()

    # ---- derived values -------------------------------------------------------------
    @property
    def num_malicious(self) -> int:
        """N·m% rounded to the nearest integer (halves round up): m=3% of 50 gives 2."""
        return int(math.floor(self.num_participants * self.m + 0.5 + 1e-9))

    @property
    def lr_step_rounds(self) -> int:
        """The LR schedule's step in global rounds.

        Participants are stateless here (a fresh optimizer each round, the standard FedAvg
        reading). The reference code's per-participant scheduler advances only when that
        participant is selected, about every N/k rounds, so its step of `lr_step` epochs is
        `lr_step * N / k` global rounds.
        """
        return max(1, round(self.lr_step * self.num_participants / self.k))

    def lr_at(self, rnd: int) -> float:
        """Learning rate of round `rnd` (1-based) of this run (global round warm_start + rnd)."""
        steps = (self.warm_start + rnd - 1) // self.lr_step_rounds
        return max(self.lr * self.lr_gamma**steps, LR_MIN)

    def lr_after_calls(self, calls: int) -> float:
        """client_state="persistent": the learning rate of a participant's training call after
        `calls` earlier ones (its own step scheduler)."""
        return max(self.lr * self.lr_gamma ** (calls // self.lr_step), LR_MIN)

    def eval_rounds(self) -> list[int]:
        return [r for r in range(1, self.rounds + 1) if r % self.eval_every == 0 or r == self.rounds]

    def replace(self, **changes: Any) -> Config:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"unknown config field {name!r}{suggest(name, self.field_names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """A Config from a dict of fields; also takes a stored run's `key_dict()`, whose
        `numerics_revision` belongs to the key, not to the configuration (a key recomputed from
        the result then holds this code's revision: a run of another revision is stale)."""
        valid = cls.field_names()
        d = {name: v for name, v in d.items() if name != "numerics_revision"}
        for name in d:
            if name not in valid:
                raise ConfigError(
                    f"unknown config field {name!r}{suggest(name, valid)} (valid: {', '.join(valid)})"
                )
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict:
        """The fields that determine the numbers (for the result store's hash): every field,
        with the option dicts resolved (every default of the extension's `Params` filled in),
        so changing a default can never serve a result computed under the old one.

        A field listed in `KEY_NEUTRAL` is left out while it holds its neutral value (see
        there): adding an option must not invalidate every run stored before it existed. The
        dataset's numerics revision (`flcore.core.numerics.DATASET_REVISIONS`) is added as
        `numerics_revision` when it is not 0.
        """
        d = self.to_dict()
        d.update(self.resolved_params())
        for name, neutral in KEY_NEUTRAL.items():
            if d.get(name) == neutral:
                del d[name]
        revision = dataset_revision(self.dataset)
        if revision:  # a change of the numbers confined to this dataset's code path
            d["numerics_revision"] = revision
        return d

    # ---- the extensions ----------------------------------------------------------------------
    @property
    def spec(self):
        """The dataset's `flcore.data.DatasetSpec`."""
        return DATASETS.get(self.dataset)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def _context(self) -> dict:
        """What a Params check may depend on (n_train: the training images a run uses)."""
        n_train = self.n_train if self.n_train is not None else self.spec.train_size
        return dict(dataset=self.dataset, k=self.k, num_participants=self.num_participants,
                    num_classes=self.num_classes, src=self.src, tgt=self.tgt, rounds=self.rounds,
                    n_train=n_train, batch_size=self.batch_size, client_state=self.client_state)  # fmt: skip

    def resolved_params(self) -> dict:
        """attack_params, aggregator_params and defense_params with every default filled in."""
        ctx = self._context()
        out = {
            "attack_params": ATTACKS.get(self.attack).validate(self.attack_params, ctx).to_dict(),
            "aggregator_params": AGGREGATORS.get(self.aggregator).validate(self.aggregator_params, ctx).to_dict(),
        }
        if self.defense is not None:
            out["defense_params"] = DEFENSES.get(self.defense).validate(self.defense_params, ctx).to_dict()
        return out

    def build_attack(self):
        """The configured `flcore.attacks.Attack` (validated)."""
        from flcore.attacks import build

        return build(self.attack, self.attack_params, src=self.src, tgt=self.tgt,
                     num_classes=self.num_classes, context=self._context())  # fmt: skip

    def build_defense(self):
        """The configured `flcore.defenses.Defense`, or None."""
        if self.defense is None:
            return None
        from flcore.defenses.base import build

        return build(self.defense, self.defense_params, self._context())

    def build_aggregator(self):
        """The configured `flcore.defenses.Aggregator`."""
        from flcore.defenses.aggregators import build

        return build(self.aggregator, self.aggregator_params, self._context())

    # ---- validation ---------------------------------------------------------------------
    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise ConfigError(msg)

        def check_type(name: str, types, what: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, types):
                fail(f"{name}={v!r} ({type(v).__name__}): {name} must be {what}")

        def choice(name: str, valid) -> None:
            v = getattr(self, name)
            if v not in valid:
                fail(f"{name}={v!r}: unknown {name}{suggest(v, valid)} (valid: {', '.join(map(str, valid))})")

        choice("dataset", DATASETS.names())
        n_cls = self.num_classes
        choice("strategy", STRATEGIES)
        choice("partition", PARTITIONS)
        choice("precision", PRECISIONS)
        choice("device", DEVICES)
        choice("engine", ENGINES)
        choice("client_state", CLIENT_STATES)
        if self.client_state == "persistent" and self.warm_start:
            fail(f"client_state='persistent' with warm_start={self.warm_start}: a warm start "
                 f"begins from a clean model but not from its participants' optimizers; use "
                 f"warm_start=0 with persistent participants, or client_state='stateless'")  # fmt: skip
        choice("record_updates", RECORD_UPDATES)

        for name in ("rounds", "num_participants", "k", "repeats", "batch_size", "local_epochs",
                     "lr_step", "eval_every"):  # fmt: skip
            check_type(name, int, "a positive integer")
            if getattr(self, name) <= 0:
                fail(f"{name}={getattr(self, name)}: {name} must be a positive integer (>= 1)")
        ec = self.eval_classes
        if ec is not None and (not isinstance(ec, tuple) or not ec
                               or not all(isinstance(c, int) and 0 <= c < n_cls for c in ec)):  # fmt: skip
            fail(f"eval_classes={ec!r}: give a non-empty list of class indices in 0..{n_cls - 1} "
                 f"(e.g. [{self.src}] for the source class), or None for all classes")  # fmt: skip
        check_type("warm_start", int, "an integer number of clean rounds (0: none)")
        if self.warm_start < 0:
            fail(f"warm_start={self.warm_start}: the clean warm-up must be >= 0 rounds (0: none)")
        if not isinstance(self.keep_model, bool):
            fail(f"keep_model={self.keep_model!r}: keep_model must be True or False")
        check_type("seed", int, "an integer")
        if self.seed < 0:
            fail(f"seed={self.seed}: the seed must be >= 0")
        for name in ("m", "lr", "momentum", "lr_gamma", "beta"):
            check_type(name, (int, float), "a number")
            if not math.isfinite(getattr(self, name)):
                fail(f"{name}={getattr(self, name)}: {name} must be a finite number")
        if not 0.0 <= self.m <= 1.0:
            hint = f"; did you mean {self.m / 100:g} ({self.m:g}%)?" if 1 < self.m <= 100 else ""
            fail(f"m={self.m}: the malicious fraction must be in [0, 1]{hint}")
        if self.lr <= 0:
            fail(f"lr={self.lr}: the learning rate must be > 0")
        if not 0.0 <= self.momentum < 1.0:
            fail(f"momentum={self.momentum}: SGD momentum must be in [0, 1)")
        if not 0.0 < self.lr_gamma <= 1.0:
            fail(f"lr_gamma={self.lr_gamma}: the LR decay factor must be in (0, 1]")
        if self.beta <= 0:
            fail(f"beta={self.beta}: the Dirichlet concentration must be > 0 (small = more skewed)")
        if self.k > self.num_participants:
            fail(f"k={self.k} > num_participants={self.num_participants}: cannot select more "
                 f"participants per round than exist; lower k or raise num_participants")  # fmt: skip
        for name in ("src", "tgt"):
            check_type(name, int, f"a class index in 0..{n_cls - 1}")
            if not 0 <= getattr(self, name) < n_cls:
                fail(f"{name}={getattr(self, name)}: class must be in 0..{n_cls - 1} "
                     f"for {self.dataset}")  # fmt: skip
        if self.src == self.tgt:
            fail(f"src=tgt={self.src}: label flipping needs two different classes")
        check_type("break_round", int, "an integer round")
        if self.strategy != "random" and not 0 <= self.break_round <= self.rounds:
            fail(f"break_round={self.break_round}: must be in [0, rounds={self.rounds}]; "
                 f"lower it or raise rounds")  # fmt: skip
        if self.strategy == "availability":
            if self.alpha is None:
                fail("alpha=None: strategy 'availability' needs alpha in [0, 1], e.g. alpha=0.9")
            check_type("alpha", (int, float), "a number in [0, 1]")
            if not 0.0 <= self.alpha <= 1.0:
                fail(f"alpha={self.alpha}: the malicious availability must be in [0, 1]")
        elif self.alpha is not None:
            check_type("alpha", (int, float), "a number in [0, 1]")
            if not 0.0 <= self.alpha <= 1.0:
                fail(f"alpha={self.alpha}: the malicious availability must be in [0, 1]")
            fail(f"alpha={self.alpha} is only used by strategy 'availability' "
                 f"(strategy={self.strategy!r}); drop alpha or set strategy='availability'")  # fmt: skip
        honest = self.num_participants - self.num_malicious
        if self.strategy in ("early", "late", "availability") and honest < self.k:
            fail(f"m={self.m}: only {honest} honest participants, but strategy {self.strategy!r} "
                 f"needs k={self.k} honest ones for its honest-only rounds; lower m or k")  # fmt: skip
        for name in ("n_train", "n_test"):
            v = getattr(self, name)
            if v is not None:
                check_type(name, int, "a positive integer or None (all)")
                if v < n_cls:
                    fail(f"{name}={v}: a class-balanced subset needs at least {n_cls} images")
                size = self.spec.train_size if name == "n_train" else self.spec.test_size
                if v > size:
                    split = "training" if name == "n_train" else "test"
                    fail(f"{name}={v}: {self.spec.title}'s {split} split has only {size} images; "
                         f"lower {name} to at most {size}, or None for all of them")  # fmt: skip
        if self.n_train is not None and self.n_train < self.num_participants * self.batch_size:
            fail(f"n_train={self.n_train}: each of the {self.num_participants} participants needs "
                 f"at least one batch of {self.batch_size}; raise n_train to at least "
                 f"{self.num_participants * self.batch_size}")  # fmt: skip
        for name in ("aggregator_params", "defense_params", "attack_params"):
            v = getattr(self, name)
            if not isinstance(v, dict):
                fail(f"{name}={v!r} ({type(v).__name__}): {name} must be a dict of options, "
                     f"e.g. {{'beta': 0.2}} for trimmed_mean or {{'start_round': 10}} for the PCA defense")  # fmt: skip
        choice("aggregator", AGGREGATORS.names())
        choice("attack", ATTACKS.names())
        if self.defense is not None:
            choice("defense", DEFENSES.names())
        elif self.defense_params:
            fail(f"defense_params={self.defense_params!r} but defense=None: set a defense "
                 f"({', '.join(DEFENSES.names())}) or drop defense_params")  # fmt: skip
        self.resolved_params()  # every option of every extension, checked against this config
        reason = self.build_aggregator().equals_mean(self.k)
        if reason:  # valid, but the rule is FedAvg in disguise: say so, once per place
            warnings.warn(f"aggregator={self.aggregator!r}: {reason}", MeanEquivalentWarning,
                          stacklevel=_outside_stacklevel())  # fmt: skip
