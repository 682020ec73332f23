"""The rules every attack keeps, as reusable assertions (range, budget, input and model unchanged,
determinism, batch independence, with sample ids also for random attacks)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attacks.base import Attack, AttackResult

TOLERANCE = 1e-5


def model_state(objective: Any) -> tuple[dict[str, Tensor], dict[str, bool], dict[str, bool]]:
    model = objective.model
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {k: m.training for k, m in model.named_modules()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    return params, modes, flags


def assert_budget(adv: Tensor, images: Tensor, norm: str | None, eps: float | None) -> None:
    """The perturbation lies in the Linf or L2 ball of radius eps (float tolerance)."""
    if norm is None:
        return
    delta = (adv - images).flatten(1)
    size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + TOLERANCE).all(), f"{norm} budget {eps} exceeded: max {size.max().item()}"


def slice_target(target: Any, index: int) -> Any:
    """The target of sample ``index`` alone (a tensor slice, or a one-element list of dicts)."""
    return target[index : index + 1]


def assert_invariants(
    attack: Attack,
    objective: Any,
    images: Tensor,
    target: Any,
    norm: str | None,
    eps: float | None,
    batch_independent: bool = True,
) -> AttackResult:
    """Run ``attack`` and check every rule of the attack library; returns the first result."""
    images_before = images.clone()
    params, modes, flags = model_state(objective)
    # start from a train-mode model with trainable parameters to see that both are restored
    objective.model.train()
    for p in objective.model.parameters():
        p.requires_grad_(True)
    _, modes_train, flags_train = model_state(objective)

    result = attack(objective, images, target)

    adv = result.adv_images
    assert adv.shape == images.shape and adv.dtype == images.dtype
    assert torch.equal(images, images_before), "input tensor modified"
    assert adv.min() >= 0.0 and adv.max() <= 1.0, "output outside [0, 1]"
    assert_budget(adv, images, norm, eps)
    after, modes_after, flags_after = model_state(objective)
    assert all(torch.equal(after[k], params[k]) for k in params), "model parameters changed"
    assert modes_after == modes_train, "train/eval mode not restored"
    assert flags_after == flags_train, "requires_grad flags not restored"
    assert all(p.grad is None for p in objective.model.parameters()), "parameter gradients accumulated"

    again = attack(objective, images, target)
    assert torch.equal(again.adv_images, adv), "not deterministic for a fixed seed"

    if batch_independent:
        # sign steps may flip where a gradient is ~0 and batched kernels round differently
        alone = attack(objective, images[1:2], slice_target(target, 1))
        differs = (alone.adv_images - adv[1:2]).abs() > TOLERANCE
        assert differs.float().mean() < 1e-3, "sample attacked alone differs from the same sample in a batch"

    objective.model.eval()
    for name, p in objective.model.named_parameters():
        p.requires_grad_(flags[name])
    for name, m in objective.model.named_modules():
        m.training = modes[name]
    return result


def assert_independent_with_ids(attack: Attack, objective: Any, images: Tensor, target: Tensor) -> None:
    """Given sample ids, each of 4 samples gets the same result alone, in the batch and in the reversed batch,
    and a repeated call gives the same results (every random draw is per sample, seeded from its id)."""
    ids = [f"case-{i}" for i in range(4)]
    images, target = images[:4], target[:4]
    batch = attack(objective, images, target, ids=ids).adv_images
    assert torch.equal(attack(objective, images, target, ids=ids).adv_images, batch), "not deterministic"
    reversed_batch = attack(objective, images.flip(0), target.flip(0), ids=ids[::-1]).adv_images
    assert torch.allclose(reversed_batch.flip(0), batch, rtol=0, atol=TOLERANCE), "result depends on batch order"
    for i in range(4):
        alone = attack(objective, images[i : i + 1], slice_target(target, i), ids=ids[i : i + 1]).adv_images
        assert torch.allclose(alone, batch[i : i + 1], rtol=0, atol=TOLERANCE), f"sample {i} differs alone"


def accuracy(objective: Any, images: Tensor, target: Tensor) -> float:
    """Fraction of correct predictions (per sample, or per pixel for segmentation)."""
    with torch.no_grad():
        return (objective.predict(objective.forward(images)) == target).float().mean().item()
