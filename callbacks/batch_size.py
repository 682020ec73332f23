"""Attack batch sizes: each test batch is attacked in chunks, of a fixed size or of the largest size that
fits in GPU memory, found once per model, attack, device and image shape by a search on CUDA
out-of-memory errors. With sample ids, an attack whose draws are per sample gives the same result in
chunks as on the whole batch (up to the rounding of batched kernels)."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.base import Attack, AttackResult, AttackTrace, Objective

Fits = Callable[[int], bool]
T = TypeVar("T")
Probe = Callable[[Attack, Objective, Tensor, Any, Sequence[str] | None], Fits]


def largest_fitting(fits: Fits, limit: int) -> int:
    """The largest n in [1, limit] with ``fits(n)``, given that whatever fits, fits when smaller: ``limit``
    first, then a binary search between the largest size known to fit and the smallest known not to.
    RuntimeError when not even one sample fits."""
    if fits(limit):
        return limit
    low, high = 0, limit  # fits(low) (0: nothing run), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    if low == 0:
        raise RuntimeError("the attack runs out of memory on a single sample")
    return low


def free_cuda_cache() -> None:
    """Return the cached blocks of a failed allocation, so the next try starts from free memory."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fits_without_oom(run: Callable[[int], object]) -> Fits:
    """``fits(n)``: whether ``run(n)`` finishes without a CUDA out-of-memory error (the cache is emptied
    after one, so the next trial starts from free memory)."""

    def fits(size: int) -> bool:
        try:
            run(size)
        except torch.cuda.OutOfMemoryError:
            free_cuda_cache()
            return False
        return True

    return fits


def halving_on_oom(run: Callable[[int], T], size: int, floor: int = 1,
                   retried: Callable[[int, int], None] | None = None) -> tuple[T, int]:
    """``run(size)``, and after each CUDA out-of-memory error ``run`` again with half the size, down to
    ``floor`` (whose error is raised); returns the result and the size that fitted. ``retried(old, new)``
    hears of each retry. For whole runs that cannot be searched cheaply, unlike :func:`largest_fitting`."""
    while True:
        try:
            return run(size), size
        except torch.cuda.OutOfMemoryError:
            if size <= floor:
                raise
            free_cuda_cache()
            smaller = max(floor, size // 2)
            if retried:
                retried(size, smaller)
            size = smaller


def attack_trials(attack: Attack, objective: Objective, images: Tensor, target: Any, ids: Sequence[str] | None) -> Fits:
    """The default probe: ``fits(n)`` runs the attack on the first n samples of the batch."""
    return fits_without_oom(
        lambda size: attack(objective, images[:size], take(target, 0, size), ids=take(ids, 0, size))
    )


class AttackBatchSizes:
    """The largest attack chunk that fits, searched (``largest_fitting`` over ``probe``, at most the batch
    size) on the first batch of each model, attack, device and image shape, and remembered after. On a
    device type outside ``devices`` (CPU by default: no OOM error to search on) the whole batch is one chunk.
    """

    def __init__(self, probe: Probe = attack_trials, devices: Sequence[str] = ("cuda",)) -> None:
        self.probe = probe
        self.devices = tuple(devices)
        self.found: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str, tuple[int, ...]], int]] = (
            weakref.WeakKeyDictionary()
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (as for DDP-spawned processes) without the sizes found, which belong to this process's models."""
        return {"probe": self.probe, "devices": self.devices}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def size(self, attack: Attack, objective: Objective, images: Tensor, target: Any, ids: Sequence[str] | None) -> int:
        """The chunk size for this attack on this batch: searched on first use, then remembered."""
        if images.device.type not in self.devices:
            return len(images)
        sizes = self.found.setdefault(objective.model, {})
        key = (repr(attack), str(images.device), tuple(images.shape[1:]))
        if key not in sizes:
            sizes[key] = largest_fitting(self.probe(attack, objective, images, target, ids), len(images))
        return sizes[key]


def take(values: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a batch tensor, a list of targets or ids (None stays None)."""
    return None if values is None else values[start:stop]


def padded(parts: Sequence[Tensor], fill: float) -> Tensor:
    """(B, T) per-step traces of the chunks, each right-padded with ``fill`` to the longest, stacked."""
    width = max(part.shape[1] for part in parts)
    return torch.cat([F.pad(part, (0, width - part.shape[1]), value=fill) for part in parts])


def concatenated(results: Sequence[AttackResult], sizes: Sequence[int]) -> AttackResult:
    """The results of consecutive chunks of ``sizes`` samples as one result. Per-step traces of chunks
    that stopped early are padded as the trace pads samples that stopped: NaN cosines and losses (no
    update), zero update variances. Extras that are per-sample tensors are concatenated; the others (such
    as AutoAttack's stage names) are the same for every chunk and kept once."""
    traces = [result.trace for result in results]
    trace = AttackTrace(
        variance=torch.cat([t.variance for t in traces]),
        update_cosine=padded([t.update_cosine for t in traces], float("nan")),
        update_variance=padded([t.update_variance for t in traces], 0.0),
        iterations=torch.cat([t.iterations for t in traces]),
        queries=torch.cat([t.queries for t in traces]),
        losses=padded([t.losses for t in traces], float("nan")),
    )
    extras = {}
    for name, first in results[0].extras.items():
        values = [result.extras[name] for result in results]
        pairs = zip(values, sizes, strict=True)
        per_sample = all(isinstance(value, Tensor) and value.dim() > 0 and len(value) == n for value, n in pairs)
        extras[name] = torch.cat(values) if per_sample else first
    return AttackResult(torch.cat([result.adv_images for result in results]), trace, extras)


def attack_in_chunks(
    attack: Attack, objective: Objective, images: Tensor, target: Any, ids: Sequence[str] | None, size: int
) -> AttackResult:
    """The attack run on consecutive chunks of at most ``size`` samples, as one result."""
    if size >= len(images):
        return attack(objective, images, target, ids=ids)
    starts = range(0, len(images), size)
    results = [
        attack(objective, images[i : i + size], take(target, i, i + size), ids=take(ids, i, i + size)) for i in starts
    ]
    return concatenated(results, [len(result.adv_images) for result in results])


def check_attack_batch_size(value: int | str | AttackBatchSizes | None) -> int | AttackBatchSizes | None:
    """The ``attack_batch_size`` option as used: None (whole batches), a chunk size >= 1, or an
    ``AttackBatchSizes`` ("auto" makes the default one); ValueError naming anything else."""
    if isinstance(value, str) and value == "auto":
        return AttackBatchSizes()
    if value is None or isinstance(value, AttackBatchSizes):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"attack_batch_size must be None, an integer >= 1 or 'auto', got {value!r}")
