"""Attacks: what malicious participants do to their training data (`flcore.attacks.base`).

Registered: label_flip (the paper's targeted flip src -> tgt), random_flip (untargeted),
many_to_one (several sources -> tgt), backdoor (a pixel trigger, relabelled tgt) and
adaptive_flip (the targeted flip blended with an honest update, against the PCA detector).
A new attack is one module that subclasses `Attack` and registers it in `ATTACKS`
(docs/EXTENDING.md).
"""

from flcore.attacks import adaptive_flip, backdoor, label_flip, many_to_one, random_flip  # noqa: F401  (registration)
from flcore.attacks.base import ATTACKS, Attack, CraftContext, NoParams, PoisonContext, build

__all__ = ["ATTACKS", "Attack", "CraftContext", "NoParams", "PoisonContext", "build"]
