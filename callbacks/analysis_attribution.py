"""Where a model looks, clean against adversarial (Ma et al. 2020, Figs. 6 and 11): Grad-CAM (Selvaraju et
al. 2017) on convolutional networks, gradient saliency (Simonyan et al. 2014) otherwise, and two measures
of how far the attribution moved: Spearman rank correlation and IoU of the top-20% regions."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from attacks.base import Objective

MIN_SIDE = 8  # Grad-CAM maps smaller than this (a ResNet's last stage at 64 px is 2 x 2) say too little


def is_convolutional(model: nn.Module) -> bool:
    """Whether most of the network's weights are convolution weights (a ViT's patch embedding is not)."""
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    return conv > 0.5 * sum(p.numel() for p in model.parameters())


def cam_layer(objective: Objective, images: Tensor) -> nn.Conv2d | None:
    """The Grad-CAM layer: the most downsampled convolution output that is still at least ``MIN_SIDE``
    pixels on its short side (the last such); None for a network that is not convolutional."""
    if not is_convolutional(objective.model):
        return None
    sides: dict[nn.Conv2d, int] = {}
    hooks = [m.register_forward_hook(lambda m, _, out: sides.__setitem__(m, min(out.shape[-2:])))
             for m in objective.model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            objective.forward(images[:1])
    finally:
        for hook in hooks:
            hook.remove()
    usable = [(side, i, m) for i, (m, side) in enumerate(sides.items()) if side >= MIN_SIDE]
    return min(usable, key=lambda item: (item[0], -item[1]))[2] if usable else None


def predicted_score(objective: Objective, outputs: object) -> Tensor:
    """The summed logit of the predicted class at every position (one per sample for a classifier, one per
    pixel for a segmenter): the quantity whose gradient Grad-CAM and saliency follow."""
    logits = objective.logits(outputs)
    return logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()


@contextmanager
def activation_of(layer: nn.Module) -> Iterator[list[Tensor]]:
    """The output of ``layer`` in each forward pass inside the block."""
    found: list[Tensor] = []
    hook = layer.register_forward_hook(lambda _, __, out: found.append(out))
    try:
        yield found
    finally:
        hook.remove()


def grad_cam(objective: Objective, images: Tensor, layer: nn.Module) -> Tensor:
    """Grad-CAM before its ReLU (N, h, w): sum_k alpha_k A^k with alpha_k = mean over positions of
    d score / d A^k, score the predicted class's logit (Selvaraju et al. 2017, Eqs. 1-2). Drawn, the map is
    clipped at 0 (the ReLU); the shift measures rank the signed map, which the ReLU would flatten to ties."""
    inputs = images.detach().clone().requires_grad_(True)  # parameters are frozen: the graph starts here
    with activation_of(layer) as found:
        score = predicted_score(objective, objective.forward(inputs))
    (activation,) = found
    (gradient,) = torch.autograd.grad(score, activation)
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    return (weights * activation.float()).sum(dim=1).detach()


def saliency(objective: Objective, images: Tensor) -> Tensor:
    """Gradient saliency (N, H, W): max over channels of |d score / d x|."""
    inputs = images.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(predicted_score(objective, objective.forward(inputs)), inputs)
    return gradient.abs().amax(dim=1).detach()


def attribution_maps(objective: Objective, images: Tensor, layer: nn.Module | None) -> Tensor:
    """Grad-CAM on ``layer``, or saliency when there is none; (N, h, w) float on the CPU."""
    maps = saliency(objective, images) if layer is None else grad_cam(objective, images, layer)
    return maps.float().cpu()


def rank_correlation(first: Tensor, second: Tensor) -> Tensor:
    """Spearman's rho per sample between two (N, h, w) maps: the Pearson correlation of their ranks (ties
    averaged); NaN where a map is constant."""
    from scipy.stats import rankdata  # scipy.stats loads slowly: only when maps are compared

    ranks = [torch.from_numpy(rankdata(m.flatten(1).double().numpy(), axis=1)) for m in (first, second)]
    centred = [r - r.mean(dim=1, keepdim=True) for r in ranks]
    norms = centred[0].norm(dim=1) * centred[1].norm(dim=1)
    rho = (centred[0] * centred[1]).sum(dim=1) / norms
    return torch.where(norms > 0, rho, torch.full_like(rho, math.nan)).float()


def top_region(maps: Tensor, share: float) -> Tensor:
    """Boolean (N, h * w): each map's top ``share`` of positions by value."""
    flat = maps.flatten(1)
    count = max(1, math.ceil(share * flat.shape[1]))
    region = torch.zeros_like(flat, dtype=torch.bool)
    return region.scatter(1, flat.topk(count, dim=1).indices, True)


def top_iou(first: Tensor, second: Tensor, share: float = 0.2) -> Tensor:
    """IoU per sample of the top-``share`` regions of two (N, h, w) maps."""
    a, b = top_region(first, share), top_region(second, share)
    return ((a & b).sum(dim=1) / (a | b).sum(dim=1)).float()
