"""BRISQUE no-reference image quality (Mittal, Moorthy, Bovik, IEEE TIP 2012), batched in torch.

The features follow the MATLAB reference ``brisque_feature.m`` that trained the LIVE model shipped in
the ``brisque`` package (``models/svm.txt``, ``normalize.pickle``): MSCN coefficients (Eq. 1), a GGD
fit of the MSCN field, AGGD fits of the four paired products (Eq. 7-10), at two scales; an RBF SVR
maps the 36 features to a score. Lower scores mean better quality.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_SIZE = 13
"""Smallest height/width: the half-scale image must still hold a whole 7x7 window."""

_RGB_TO_GREY = (0.298936021293775, 0.587043074451121, 0.114020904255103)  # MATLAB rgb2gray
_WINDOW_SIZE, _WINDOW_SIGMA = 7, 7 / 6
_PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))  # horizontal, vertical, two diagonals (circshift)
_SHAPE_GRID = (0.2, 10.0, 0.001)  # the reference's lookup over the shape parameter: 0.2:0.001:10
_ROUNDING_NOISE = 1e-9
"""Grey levels: a pixel minus its local mean below this is convolution rounding of an exact 0 (flat
region). Snapping it to 0 keeps the AGGD sign split, and so the score, independent of how (CPU, GPU,
batch) the convolution rounds."""


def check_images(images: Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` unless it is a (B, C, H, W) batch, C = 1 or 3, in [0, 1]."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (B, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")


@dataclass(frozen=True)
class BrisqueModel:
    """The LIVE epsilon-SVR (RBF kernel) and the feature range that maps features to [-1, 1]."""

    feature_min: Tensor
    feature_max: Tensor
    support_vectors: Tensor
    coefficients: Tensor
    gamma: float
    rho: float

    def to(self, device: torch.device) -> BrisqueModel:
        return BrisqueModel(
            self.feature_min.to(device),
            self.feature_max.to(device),
            self.support_vectors.to(device),
            self.coefficients.to(device),
            self.gamma,
            self.rho,
        )

    def predict(self, features: Tensor) -> Tensor:
        """Score (B,) of features (B, 36): sum_i coef_i exp(-gamma ||x - sv_i||^2) - rho."""
        scaled = -1 + 2 * (features - self.feature_min) / (self.feature_max - self.feature_min)
        kernel = torch.exp(-self.gamma * torch.cdist(scaled, self.support_vectors).square())
        return kernel @ self.coefficients - self.rho


def model_directory() -> Path:
    """Folder of the ``brisque`` package's model files, found without importing the package."""
    spec = importlib.util.find_spec("brisque")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "BRISQUE needs the model files of the package 'brisque' (pip install brisque==0.2.0)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads the feature range, which is plain dicts, lists and floats, and nothing else."""

    def find_class(self, module: str, name: str) -> type:
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the BRISQUE feature range")


def parse_libsvm_model(path: Path, features: int) -> tuple[Tensor, Tensor, float, float]:
    """Support vectors (N, features), coefficients (N,), gamma and rho of a libsvm RBF SVR text file."""
    header: dict[str, str] = {}
    lines = path.read_text().splitlines()
    start = lines.index("SV") + 1
    for line in lines[: start - 1]:
        key, _, value = line.partition(" ")
        header[key] = value
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"{path} is not a libsvm epsilon-SVR with an RBF kernel")
    rows = [line.split() for line in lines[start:] if line.strip()]
    vectors = [[0.0] * features for _ in rows]
    for vector, (_, *entries) in zip(vectors, rows, strict=True):
        for entry in entries:  # sparse "index:value" pairs, 1-based; absent entries are zero
            index, value = entry.split(":")
            vector[int(index) - 1] = float(value)
    coefficients = [float(row[0]) for row in rows]
    return (
        torch.tensor(vectors, dtype=torch.float64),
        torch.tensor(coefficients, dtype=torch.float64),
        float(header["gamma"]),
        float(header["rho"]),
    )


@functools.lru_cache(maxsize=1)
def load_brisque_model() -> BrisqueModel:
    """Parse ``svm.txt`` and ``normalize.pickle`` once (CPU, float64)."""
    directory = model_directory()
    svm_path, range_path = directory / "svm.txt", directory / "normalize.pickle"
    for path in (svm_path, range_path):
        if not path.is_file():
            raise FileNotFoundError(f"BRISQUE model file missing: {path} (reinstall the package 'brisque')")
    with range_path.open("rb") as handle:
        feature_range = _PlainDataUnpickler(handle).load()
    feature_min = torch.tensor(feature_range["min_"], dtype=torch.float64)
    feature_max = torch.tensor(feature_range["max_"], dtype=torch.float64)
    vectors, coefficients, gamma, rho = parse_libsvm_model(svm_path, features=feature_min.numel())
    return BrisqueModel(feature_min, feature_max, vectors, coefficients, gamma, rho)


@functools.lru_cache(maxsize=4)
def _model_on(device: torch.device) -> BrisqueModel:
    return load_brisque_model().to(device)


@functools.lru_cache(maxsize=4)
def _shape_grid(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate shapes and their moment ratios: GGD Γ(1/a)Γ(3/a)/Γ(2/a)^2 and its AGGD inverse."""
    low, high, step = _SHAPE_GRID
    shapes = low + step * torch.arange(round((high - low) / step) + 1, dtype=torch.float64, device=device)
    log_ratio = torch.lgamma(1 / shapes) + torch.lgamma(3 / shapes) - 2 * torch.lgamma(2 / shapes)
    return shapes, log_ratio.exp(), (-log_ratio).exp()


@functools.lru_cache(maxsize=4)
def _gaussian_line(device: torch.device) -> Tensor:
    """1-D factor of MATLAB fspecial('gaussian', 7, 7/6), whose outer product is the 7x7 window."""
    offsets = torch.arange(_WINDOW_SIZE, dtype=torch.float64, device=device) - _WINDOW_SIZE // 2
    line = torch.exp(-offsets.square() / (2 * _WINDOW_SIGMA**2))
    return line / line.sum()


def _local_mean(x: Tensor) -> Tensor:
    """Gaussian-weighted local mean of (N, 1, H, W), zero-padded as filter2(..., 'same'); separable."""
    line, pad = _gaussian_line(x.device), _WINDOW_SIZE // 2
    x = F.conv2d(x, line.view(1, 1, -1, 1), padding=(pad, 0))
    return F.conv2d(x, line.view(1, 1, 1, -1), padding=(0, pad))


def _cubic(x: Tensor) -> Tensor:
    """MATLAB imresize's bicubic kernel (a = -0.5)."""
    ax = x.abs()
    near = 1.5 * ax**3 - 2.5 * ax**2 + 1
    far = -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return torch.where(ax <= 1, near, torch.where(ax <= 2, far, torch.zeros_like(ax)))


@functools.lru_cache(maxsize=16)
def _halving_matrix(length: int, device: torch.device) -> Tensor:
    """(ceil(length / 2), length) matrix of MATLAB imresize(., 0.5): antialiased bicubic, mirrored edges."""
    scale, width = 0.5, 8.0  # antialiasing widens the kernel to 4 / scale taps
    out = torch.arange(1, math.ceil(length * scale) + 1, dtype=torch.float64)
    centre = out / scale + 0.5 * (1 - 1 / scale)
    taps = torch.floor(centre - width / 2).unsqueeze(1) + torch.arange(int(width) + 2, dtype=torch.float64)
    weights = scale * _cubic(scale * (centre.unsqueeze(1) - taps))
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(length), torch.arange(length - 1, -1, -1)])
    columns = mirror[(taps.long() - 1).remainder(2 * length)]
    matrix = torch.zeros(out.numel(), length, dtype=torch.float64)
    matrix.scatter_add_(1, columns, weights)
    return matrix.to(device)


def halve(grey: Tensor) -> Tensor:
    """Downscale (B, H, W) by two as MATLAB imresize(img, 0.5) does (the reference's second scale)."""
    rows = _halving_matrix(grey.shape[-2], grey.device)
    columns = _halving_matrix(grey.shape[-1], grey.device)
    return rows @ grey @ columns.T


def to_grey(images: Tensor) -> Tensor:
    """(B, C, H, W) in [0, 1], C = 1 or 3 -> (B, H, W) float64 grey levels in [0, 255] (MATLAB rgb2gray)."""
    images = images.to(torch.float64) * 255
    if images.shape[1] == 1:
        return images[:, 0]
    weights = torch.tensor(_RGB_TO_GREY, dtype=torch.float64, device=images.device)
    return torch.einsum("bchw,c->bhw", images, weights)


def mscn(grey: Tensor) -> Tensor:
    """Mean-subtracted contrast-normalised coefficients (Eq. 1) of (B, H, W) grey levels, C = 1."""
    x = grey.unsqueeze(1)
    mean = _local_mean(x)
    deviation = (_local_mean(x.square()) - mean.square()).abs().sqrt()
    centred = x - mean
    centred = centred.masked_fill(centred.abs() < _ROUNDING_NOISE, 0.0)
    return (centred / (deviation + 1)).squeeze(1)


def _nearest_shape(ratio: Tensor, table: Tensor) -> Tensor:
    """The grid shape whose moment ratio is nearest to ``ratio`` (first on ties; NaN stays NaN)."""
    shapes = _shape_grid(ratio.device)[0]
    nearest = shapes[(ratio.unsqueeze(-1) - table).abs().argmin(dim=-1)]
    return torch.where(ratio.isnan(), torch.nan, nearest)


def fit_ggd(x: Tensor) -> tuple[Tensor, Tensor]:
    """Moment-matching GGD fit over the last dimension: shape alpha and variance (estimateggdparam.m)."""
    variance = x.square().mean(dim=-1)
    ratio = variance / x.abs().mean(dim=-1).square()
    return _nearest_shape(ratio, _shape_grid(x.device)[1]), variance


def fit_aggd(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Moment-matching AGGD fit over the last dimension: shape, mean, left and right variances.

    As estimateaggdparam.m: zeros fall in neither one-sided variance.
    """
    negative, positive = x.clamp(max=0), x.clamp(min=0)
    left_squares, right_squares = negative.square().sum(dim=-1), positive.square().sum(dim=-1)
    left = left_squares / (x < 0).sum(dim=-1)
    right = right_squares / (x > 0).sum(dim=-1)
    gamma_hat = (left / right).sqrt()
    r_hat = (positive - negative).sum(dim=-1).square() / (x.shape[-1] * (left_squares + right_squares))
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1).square()
    alpha = _nearest_shape(r_norm, _shape_grid(x.device)[2])
    log_gamma = torch.lgamma(2 / alpha) - 0.5 * torch.lgamma(1 / alpha) - 0.5 * torch.lgamma(3 / alpha)
    mean = (right.sqrt() - left.sqrt()) * log_gamma.exp()
    return alpha, mean, left, right


def scale_features(grey: Tensor) -> Tensor:
    """The 18 features of one scale, (B, 18): GGD of the MSCN field, AGGD of four paired products."""
    coefficients = mscn(grey)
    pairs = torch.stack([coefficients * coefficients.roll(shift, dims=(-2, -1)) for shift in _PAIR_SHIFTS], 1)
    alpha, variance = fit_ggd(coefficients.flatten(1))
    pair_features = torch.stack(fit_aggd(pairs.flatten(2)), dim=-1)  # (B, 4, 4)
    return torch.cat([alpha.unsqueeze(1), variance.unsqueeze(1), pair_features.flatten(1)], dim=1)


def brisque_features(images: Tensor) -> Tensor:
    """The 36 BRISQUE features (B, 36) of images (B, C, H, W) in [0, 1]: 18 at full and at half scale."""
    check_images(images, "images")
    if min(images.shape[-2:]) < MIN_SIZE:
        raise ValueError(
            f"BRISQUE needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {tuple(images.shape[-2:])}"
        )
    grey = to_grey(images)
    return torch.cat([scale_features(grey), scale_features(halve(grey))], dim=1)


def brisque(images: Tensor) -> Tensor:
    """BRISQUE score (B,) float64 per image; about 0-100, lower is better, not clamped.

    An image whose MSCN field or a paired product has no negative or no positive value (e.g. an
    all-black image) has no defined score and gets NaN.
    """
    features = brisque_features(images)
    return _model_on(features.device).predict(features)
