"""Attacks, one per file, behind one interface and one registry.

The interface (``base.Attack``)
    ``attack.craft(fn, x, y) -> (x_adv, stats)``: craft through ``fn(x_adv) -> logits``,
    the *crafting view*: a PN / BN / shaped classifier wrapper of
    ``normshape_core.inference.shaping`` (``PNClassifier``, ``BNClassifier``, ``ShapedClassifier``, ``with_exact_references``),
    or any callable. ``attack.run(clf, x, y) -> AttackResult`` builds the view
    (``crafting_view``), crafts, and records the norms the examples were crafted with
    (``crafted_with``) and their success; ``attack(clf, x, y)`` returns the examples only.
    x is [N, ...] in [0, 1], y [N] labels, x_adv has x's shape.

Rules every attack keeps
    - ``fn`` may couple rows (BN, shaped batches: a row's logits depend on the other rows),
      so every call to ``fn`` carries all N rows, unless ``rows_independent(fn)`` (PN), in
      which case forwarding a subset is allowed (and is the fast path: Square, DeepFool and
      the APGD family then query only the samples not fooled yet).
    - Running statistics never move: the views run PN or frozen BN.
    - Deterministic given ``seed``: randomness comes from a CPU ``torch.Generator``, never
      from the global RNG.
    - Settings are validated when the attack is made (``ConfigError``, one sentence): steps,
      restarts and queries >= 1, eps finite in (0, 1], ...

Files
    ``threat.py``   threat models (``LinfBall``, ``L2Ball``: random start, step, projection)
    ``base.py``     ``Attack``, ``AttackResult``, losses (CE, margin, DLR, targeted DLR),
                    ``BestIterate``, the settings check
    ``registry.py`` ``ATTACKS``, aliases, ``parse_attack_names``, ``make_attack``,
                    ``budget_settings``
    one file per attack: ``fgsm``, ``pgd`` (+ the shared loop ``pgd_linf`` that training
    uses), ``apgd`` (``apgd``, ``apgd_dlr``), ``apgd_t``, ``fab_t``, ``square``, ``cw``,
    ``deepfool``, ``shaping_attack`` (the paper's shaping attack), ``adaptive`` (Table
    III's adaptive attacks on shaped inference).

Adding an attack
    1. A file ``attacks/my_attack.py`` with a settings dataclass (fields with defaults; field
       names of ``base.SETTING_RULES`` are checked automatically, anything else in
       ``Attack.check``) and an ``Attack`` subclass setting ``name``, ``threat_model``
       (``LINF`` or ``L2_MINIMAL``), ``Settings``, its ``budget`` (the settings an evaluation
       sets: settings field -> ``EvalSettings`` field, e.g. ``{"n_queries":
       "square_queries"}``) and implementing ``craft``; its docstring follows the template
       of the others (Paper, Threat model, Settings, Shapes, Example).
    2. One entry in ``registry.ATTACKS``. The CLI's ``--attacks``, the ensembles'
       ``a+b+c`` specs and the evaluation's budget read the registry: nothing else changes.
    The tests in ``tests/test_attacks.py`` are parametrized over the registry and pick it up:
    eps-ball and [0, 1], accuracy drop on a natural model, seed reproducibility, PN / BN /
    shaped views with running statistics unchanged, full-batch calls through coupled views,
    bad settings.
"""
from .adaptive import (AdaptiveExactReferences, AdaptiveOwnReferencesEOT, EOTReferenceView,
                       EOTSettings)
from .apgd import APGD, APGDDLR, APGDSettings, apgd_checkpoints, apgd_run
from .apgd_t import APGDTargeted, APGDTSettings
from .base import (Attack, AttackResult, BestIterate, LogitsFn, check_settings, dlr_loss, margin,
                   per_sample_ce, rows_independent, targeted_dlr_loss, top_other_classes,
                   until_fooled)
from .cw import CarliniWagnerL2, CWSettings
from .deepfool import DeepFool, DeepFoolSettings
from .fab_t import FABTargeted, FABTSettings, fab_run, linf_to_hyperplane
from .fgsm import FGSM, FGSMSettings
from .pgd import PGD, PGDSettings, pgd_linf, pgd_with_restarts
from .registry import (ADAPTIVE_ATTACKS, ATTACK_ALIASES, ATTACKS, ENSEMBLE_ONLY_ATTACKS,
                       LINF_ATTACKS, budget_settings, make_attack, parse_attack_names,
                       single_attacks, zero_gradient_fraction)
from .shaping_attack import ShapingAttack, ShapingAttackSettings, ShapingBatchView
from .square import Square, SquareSettings, square_fraction
from .transfer import Transfer, TransferSettings
from .threat import (L2, L2_MINIMAL, LINF, L2Ball, LinfBall, linf_bounds, project_linf,
                     random_start_linf)

__all__ = [
    "ADAPTIVE_ATTACKS", "APGD", "APGDDLR", "APGDSettings", "APGDTSettings", "APGDTargeted",
    "ATTACKS", "ATTACK_ALIASES", "AdaptiveExactReferences", "AdaptiveOwnReferencesEOT",
    "Attack", "AttackResult", "BestIterate", "CWSettings", "CarliniWagnerL2", "DeepFool",
    "DeepFoolSettings", "EOTReferenceView", "EOTSettings", "FABTSettings", "FABTargeted",
    "FGSM", "FGSMSettings", "L2", "L2Ball", "L2_MINIMAL", "LINF", "LINF_ATTACKS", "LinfBall",
    "LogitsFn", "PGD", "PGDSettings", "ShapingAttack", "ShapingAttackSettings",
    "ShapingBatchView", "Square", "SquareSettings", "apgd_checkpoints", "apgd_run",
    "budget_settings", "check_settings", "dlr_loss", "fab_run", "linf_bounds",
    "linf_to_hyperplane", "make_attack", "margin", "parse_attack_names", "per_sample_ce",
    "pgd_linf", "pgd_with_restarts", "project_linf", "random_start_linf", "rows_independent",
    "single_attacks",
    "square_fraction", "targeted_dlr_loss", "top_other_classes", "until_fooled",
    "zero_gradient_fraction",
]
