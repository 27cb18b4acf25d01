"""DeepFool L2: minimal-perturbation attack by linearising the classifier."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import L2_MINIMAL, Attack, rows_independent


@dataclass
class DeepFoolSettings:
    overshoot: float = 0.02
    max_iter: int = 50


class DeepFool(Attack):
    """DeepFool L2 (Moosavi-Dezfooli et al. 2016), batched over the whole batch: at each
    iteration linearise every class logit, step to the nearest linearised boundary, stop per
    sample once it is misclassified; the total step is scaled by (1 + overshoot) and x_adv
    clipped to [0, 1]. Per-class gradients are gradients of the batch-summed logit, exact
    under PN; under BN they include the (small) cross-sample terms of batch statistics.
    Through a classifier whose rows are independent (``rows_independent``: PN), each
    iteration forwards only the samples still classified right, as a per-sample loop would.

    Paper: Moosavi-Dezfooli, Fawzi & Frossard 2016, "DeepFool: a simple and accurate method
    to fool deep neural networks".
    Threat model: L2, minimal perturbation (unbounded); stats report ``median_l2``.
    Settings: ``overshoot`` (0.02), ``max_iter`` (50).
    Shapes: x [N, ...] in [0, 1], y [N] -> x_adv [N, ...].
    Example: ``x_adv = DeepFool(max_iter=50)(PNClassifier(model), x, y)``
    """

    name = "deepfool"
    threat_model = L2_MINIMAL
    Settings = DeepFoolSettings

    def craft(self, fn, x, y):
        s = self.settings
        n = len(x)
        view = (n,) + (1,) * (x.dim() - 1)
        # Rows of a PN classifier are independent: each iteration forwards only the samples
        # still correctly classified. Under BN every row goes through (batch statistics).
        independent = rows_independent(fn)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(s.max_iter):
            idx = active.nonzero().squeeze(1) if independent else None
            if idx is not None and len(idx) == 0:
                break
            xa = (x_adv[idx] if independent else x_adv).clone().requires_grad_(True)
            ya = y[idx] if independent else y
            logits = fn(xa)
            right = logits.argmax(1) == ya  # the first iteration: clean_right
            if independent:
                active[idx] = right
                if not bool(right.any()):
                    break
                mask = right
            else:
                active &= right
                if not bool(active.any()):
                    break
                mask = active
            ar = torch.arange(len(xa), device=x.device)
            grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), xa, retain_graph=True)[0]
                                 for k in range(logits.shape[1])], dim=1)
            with torch.no_grad():
                w = grads - grads[ar, ya].unsqueeze(1)
                f = logits - logits[ar, ya].unsqueeze(1)
                w_norm = w.flatten(2).norm(dim=2) + 1e-8
                pert = f.abs() / w_norm
                pert[ar, ya] = math.inf
                lab = pert.argmin(1)
                r_i = ((pert[ar, lab] + 1e-4) / w_norm[ar, lab]).reshape(
                    (len(xa),) + view[1:]) * w[ar, lab]
                r_i = r_i * mask.reshape((len(xa),) + view[1:])
                if independent:
                    r_tot[idx] += r_i
                else:
                    r_tot += r_i
                x_adv = (x + (1 + s.overshoot) * r_tot).clamp(0.0, 1.0)
        return x_adv.detach(), {}
