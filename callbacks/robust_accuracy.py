"""Robust-accuracy mode of the evaluation (Croce & Hein 2020, Sec. 5: a sample is robust when it is classified
correctly and no attack changes that): each attack runs only on the samples the model classifies correctly when
clean, and stops a sample once fooled where the attack can (``early_stop``); a sample misclassified clean keeps
its clean image and counts as non-robust. Classification only (docs/metrics.md)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attacks.base import Attack, AttackResult
from callbacks.bootstrap import Parts

# extras the evaluation reads, and the value of a sample the attack skipped: a minimal norm of 0 (misclassified
# clean, as the minimal-norm attacks report it) and no attack goal (-1, a class never predicted)
SKIPPED_EXTRAS = {"norms": 0.0, "goal": -1}

AttackRun = Callable[[Tensor, Tensor, Sequence[str]], AttackResult]


def stopping_early(attack: Attack) -> Attack:
    """The attack as robust-accuracy mode runs it, a copy: rebuilt with ``early_stop=True`` where its constructor
    takes ``early_stop`` (the gradient family, APGD, SMIA; Square and AutoAttack's stages stop fooled samples
    already) and, when untargeted, told that no sample it gets is fooled clean (``Attack.clean_unfooled``: the mode
    passes only correctly classified samples), so it skips its own clean check."""
    takes_early_stop = "early_stop" in inspect.signature(type(attack)).parameters
    rebuilt = attack.configured(early_stop=True) if takes_early_stop else copy.copy(attack)
    rebuilt.clean_unfooled = attack.settings.get("target_mode", "untargeted") == "untargeted"
    return rebuilt


def correct_rows(predictions: Tensor, target: Tensor) -> Tensor:
    """(N,) indices of the samples classified correctly, the ones robust-accuracy mode attacks."""
    return (predictions == target).nonzero().squeeze(1)


@dataclass(frozen=True)
class RowsAttacked:
    """One attack on a batch of ``batch`` samples, run on its ``rows`` (None: all): the ``result`` on them (None
    when there was no row to attack) and the whole batch's adversarial images, the other samples clean."""

    batch: int
    rows: Tensor | None
    result: AttackResult | None
    adv_images: Tensor

    def clean(self, images: Tensor) -> Tensor:
        """The clean images of the attacked rows."""
        return images if self.rows is None else images[self.rows]

    def outputs(self, forward: Callable[[Tensor], Any], clean_outputs: Any) -> Any:
        """The model outputs on the adversarial batch: forwarded for the attacked rows, the clean outputs (a
        tensor, as a classifier's logits) elsewhere."""
        if self.rows is None:
            return forward(self.adv_images)
        if self.result is None:
            return clean_outputs
        return clean_outputs.index_copy(0, self.rows, forward(self.result.adv_images))

    def extra(self, name: str) -> Tensor | None:
        """The result's per-sample ``extras[name]`` over the whole batch, ``SKIPPED_EXTRAS[name]`` where skipped."""
        part = None if self.result is None else self.result.extras.get(name)
        if part is None or self.rows is None:
            return part
        full = torch.full((self.batch,), SKIPPED_EXTRAS[name], dtype=part.dtype, device=part.device)
        return full.index_copy(0, self.rows, part)

    def spread(self, parts: Parts, device: torch.device) -> Parts:
        """Per-image parts of the attacked rows over the whole batch, NaN elsewhere (which the bootstrap leaves out)."""
        if self.rows is None:
            return parts
        nan = torch.full((self.batch,), float("nan"), dtype=torch.float64, device=device)
        return {
            name: (nan.index_copy(0, self.rows, top.double()), nan.index_copy(0, self.rows, bottom.double()))
            for name, (top, bottom) in parts.items()
        }


def attack_rows(
    run: AttackRun, images: Tensor, target: Tensor, ids: Sequence[str], rows: Tensor | None
) -> RowsAttacked:
    """``run(images, target, ids)`` on the ``rows`` only (None: all; no row: not run), spread over the batch."""
    if rows is None:
        result = run(images, target, ids)
        return RowsAttacked(len(images), None, result, result.adv_images)
    if len(rows) == 0:
        return RowsAttacked(len(images), rows, None, images)
    result = run(images[rows], target[rows], [ids[i] for i in rows.tolist()])
    return RowsAttacked(len(images), rows, result, images.index_copy(0, rows, result.adv_images))
