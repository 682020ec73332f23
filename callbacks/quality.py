"""Image-quality metrics of adversarial images: BRISQUE, SSIM and PSNR as means over images.

Each metric accumulates per-image scores as sums (``dist_reduce_fx="sum"``), so the value after DDP
reduction is the exact mean over all images, also when ranks hold different numbers of images.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from callbacks.brisque import brisque, check_images


class MeanOverImages(Metric):
    """Mean of a per-image score over every image seen; NaN scores are counted in ``undefined`` only."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("undefined", torch.tensor(0), dist_reduce_fx="sum")

    @abstractmethod
    def per_image(self, *images: Tensor) -> Tensor:
        """Score (B,) of each image of the batch."""

    def update(self, *images: Tensor, scores: Tensor | None = None) -> None:
        """Add the images' scores; ``scores`` are their ``per_image`` scores when the caller has them already."""
        scores = (self.per_image(*images) if scores is None else scores).detach().to(torch.float64)
        defined = ~scores.isnan()
        self.total += scores[defined].sum()
        self.count += defined.sum()
        self.undefined += (~defined).sum()

    def compute(self) -> Tensor:
        return self.total / self.count


class BRISQUEScore(MeanOverImages):
    """Mean BRISQUE (Mittal et al. 2012) of images (B, C, H, W) in [0, 1]; lower is better.

    Images without a score (NaN, e.g. all black) are left out of the mean and counted in ``undefined``.
    """

    higher_is_better = False

    def per_image(self, images: Tensor) -> Tensor:
        return brisque(images)


def _check_pair(adversarial: Tensor, clean: Tensor) -> None:
    check_images(adversarial, "adversarial")
    check_images(clean, "clean")
    if adversarial.shape != clean.shape:
        shapes = f"{tuple(adversarial.shape)} and {tuple(clean.shape)}"
        raise ValueError(f"adversarial and clean must have one shape, got {shapes}")


class SSIMScore(MeanOverImages):
    """Mean over images of the SSIM (Wang et al. 2004) of adversarial vs clean images, data range 1.

    torchmetrics' Gaussian window (11 x 11, sigma 1.5); identical images score 1.
    """

    higher_is_better = True

    def per_image(self, adversarial: Tensor, clean: Tensor) -> Tensor:
        _check_pair(adversarial, clean)
        return structural_similarity_index_measure(adversarial, clean, data_range=1.0, reduction="none")


class PSNRScore(MeanOverImages):
    """Mean over images of the per-image PSNR (dB, data range 1) of adversarial vs clean images.

    Not torchmetrics' PeakSignalNoiseRatio, which pools the squared error of all pixels first.
    A per-image PSNR is capped at ``max_psnr``, so identical images (infinite PSNR) count as ``max_psnr``.
    """

    higher_is_better = True

    def __init__(self, max_psnr: float = 100.0, **kwargs) -> None:
        if not max_psnr > 0:
            raise ValueError(f"max_psnr must be > 0, got {max_psnr!r}")
        super().__init__(**kwargs)
        self.max_psnr = max_psnr

    def per_image(self, adversarial: Tensor, clean: Tensor) -> Tensor:
        _check_pair(adversarial, clean)
        psnr = peak_signal_noise_ratio(
            adversarial.double(), clean.double(), data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        return psnr.clamp(max=self.max_psnr)


def reference_quality_metrics(max_psnr: float = 100.0) -> MetricCollection:
    """SSIM and PSNR of adversarial vs clean images: ``update(adversarial, clean)``, means over images."""
    return MetricCollection(
        {"ssim": SSIMScore(), "psnr": PSNRScore(max_psnr=max_psnr)}, compute_groups=False
    )


class AdversarialImageQuality(torch.nn.Module):
    """SSIM and PSNR of adversarial vs clean images, and BRISQUE of the adversarial images (the image
    quality columns of the adversarial-exposure paper)."""

    def __init__(self, with_brisque: bool = True) -> None:
        super().__init__()
        self.reference = reference_quality_metrics()
        self.brisque = BRISQUEScore() if with_brisque else None

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.reference.keys(), *(("brisque",) if self.brisque is not None else ()))

    def update(self, adversarial: Tensor, clean: Tensor) -> dict[str, Tensor]:
        """Add the batch; returns each metric's per-image scores (B,), for their bootstrap intervals."""
        scores = {name: metric.per_image(adversarial, clean) for name, metric in self.reference.items()}
        if self.brisque is not None:
            scores["brisque"] = self.brisque.per_image(adversarial)
        for name, metric in self.reference.items():
            metric.update(adversarial, clean, scores=scores[name])
        if self.brisque is not None:
            self.brisque.update(adversarial, scores=scores["brisque"])
        return scores

    def compute(self) -> dict[str, Tensor]:
        scores = dict(self.reference.compute())
        if self.brisque is not None:
            scores["brisque"] = self.brisque.compute()
        return scores

    def reset(self) -> None:
        self.reference.reset()
        if self.brisque is not None:
            self.brisque.reset()
