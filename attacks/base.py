"""The attack protocol: the objective boundary, the result and trace, and the model-unchanged rule."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attacks.validation import check_images

COSINE_EPS = 1e-12  # floor on the update norms in the trace's cosines (torch's cosine_similarity eps)


@runtime_checkable
class Objective(Protocol):
    """The task boundary every attack is written against (see docs/architecture.md).

    ``model`` is the network the attack must leave unchanged. ``loss`` is per sample and is what an
    untargeted attack maximises; ``logits`` has the class dimension at 1: (B, K) for classification,
    (B, K, H, W) for segmentation, (B, K + 1, P) over proposals for detection.
    """

    model: nn.Module

    def forward(self, images: Tensor) -> Any: ...

    def loss(self, outputs: Any, target: Any) -> Tensor: ...

    def predict(self, outputs: Any) -> Any: ...

    def logits(self, outputs: Any) -> Tensor: ...

    def dense_target(self, outputs: Any, target: Any) -> Tensor: ...

    def divergence(self, outputs: Any, reference: Any) -> Tensor: ...

    def check_target(self, images: Tensor, target: Any) -> None:
        """Raise one ValueError naming ``target``, the sample and the offending value unless ``target`` suits
        ``images`` and the model (labels in its classes, masks of the image size, boxes inside the image); None
        passes. Cheap (no forward pass). Optional: ``Attack.__call__`` calls it where an objective has it."""


@dataclass
class AttackTrace:
    """Per-sample statistics of an attack's iterations (SMIA's Var and Cos), never image histories.

    ``update_cosine[b, t]`` is the cosine between the perturbation updates of iterations t and t + 1 (NaN
    where the sample was not updated at both, so a sample's cosines do not depend on its batch);
    ``variance`` is the variance of the final perturbation. Black-box attacks count ``queries``.
    ``losses[b, t]`` is the loss the attack drives up at iteration t: the task loss, negated for targeted
    attacks, or the attack's own loss where it is consistent across iterations (NaN where the sample was
    not updated; (B, 0) for attacks that record none), which the failure checks read.
    """

    variance: Tensor
    update_cosine: Tensor
    update_variance: Tensor
    iterations: Tensor
    queries: Tensor
    losses: Tensor

    def to(self, device: torch.device | str) -> AttackTrace:
        return AttackTrace(**{name: value.to(device) for name, value in self.__dict__.items()})


@dataclass
class AttackResult:
    """Adversarial images in [0, 1] and the trace of the iterations that made them."""

    adv_images: Tensor
    trace: AttackTrace
    extras: dict[str, Any] = field(default_factory=dict)

    def perturbation(self, images: Tensor) -> Tensor:
        return self.adv_images - images


def flat_variance(flat: Tensor) -> Tensor:
    """Per-row population variance of a (B, N) tensor: two passes (mean, centred norm), no Welford loop."""
    centred = flat - flat.mean(dim=1, keepdim=True)
    return torch.linalg.vector_norm(centred, dim=1).square() / flat.shape[1]


class TraceRecorder:
    """Accumulates the trace from the perturbation after each iteration, in O(batch) memory.

    Per step it makes one pass for the update, two for its variance, one for its norm and one for the
    dot product with the previous update, whose norm is kept from the step before.
    """

    def __init__(self, images: Tensor) -> None:
        self._batch = images.shape[0]
        self._device = images.device
        self._previous: Tensor | None = None
        self._previous_update: Tensor | None = None
        self._previous_norm: Tensor | None = None
        self._previous_active: Tensor | None = None
        self._cosines: list[Tensor] = []
        self._variances: list[Tensor] = []
        self._losses: list[Tensor] = []
        self._queries = torch.zeros(self._batch, dtype=torch.long, device=self._device)
        self._iterations = torch.zeros(self._batch, dtype=torch.long, device=self._device)

    def step(self, perturbation: Tensor, active: Tensor | None = None) -> None:
        """Record one iteration; ``active`` (B,) bool marks the samples still being updated.

        The recorder keeps ``perturbation`` (not a copy) until the next step: do not modify it in place.
        """
        perturbation = perturbation.detach()
        update = (perturbation if self._previous is None else perturbation - self._previous).flatten(1)
        norm = torch.linalg.vector_norm(update, dim=1)
        self._variances.append(flat_variance(update))
        if self._previous_update is not None:
            dot = torch.linalg.vecdot(update, self._previous_update)
            cosine = dot / (norm.clamp_min(COSINE_EPS) * self._previous_norm.clamp_min(COSINE_EPS))
            both = active if self._previous_active is None or active is None else active & self._previous_active
            self._cosines.append(cosine if both is None else cosine.masked_fill(~both, float("nan")))
        self._previous, self._previous_update, self._previous_norm = perturbation, update, norm
        self._previous_active = None if active is None else active.clone()
        self._iterations += 1 if active is None else active.long()

    def record_loss(self, loss: Tensor, rows: Tensor | None = None) -> None:
        """Record the per-sample loss of one iteration, of the samples ``rows`` (all when None)."""
        if rows is None:
            self._losses.append(loss.detach().float())
            return
        full = torch.full((self._batch,), float("nan"), device=self._device)
        self._losses.append(full.index_copy(0, rows, loss.detach().float()))

    def add_queries(self, count: Tensor | int) -> None:
        self._queries += count

    def finish(self, perturbation: Tensor) -> AttackTrace:
        empty = torch.zeros(self._batch, 0, device=self._device)
        return AttackTrace(
            variance=flat_variance(perturbation.detach().flatten(1)),
            update_cosine=torch.stack(self._cosines, dim=1) if self._cosines else empty,
            update_variance=torch.stack(self._variances, dim=1) if self._variances else empty,
            iterations=self._iterations.clone(),
            queries=self._queries.clone(),
            losses=torch.stack(self._losses, dim=1) if self._losses else empty,
        )


class RowTrace:
    """The trace of runs on subsets (``rows``) of the batch, as restarts and cascades make: a sample outside
    the current run keeps its last iterate (a zero update) and records no loss."""

    def __init__(self, images: Tensor) -> None:
        self.images, self.frame = images, images
        self.recorder = TraceRecorder(images)

    def step(self, iterate: Tensor, rows: Tensor | None, loss: Tensor | None = None) -> None:
        """Record one iteration of the samples ``rows`` (all when None), the only ones updated."""
        self.frame = iterate if rows is None else self.frame.index_copy(0, rows, iterate)
        if loss is not None:
            self.recorder.record_loss(loss, rows)
        active = None
        if rows is not None:
            active = torch.zeros(len(self.images), dtype=torch.bool, device=rows.device).index_fill_(0, rows, True)
        self.recorder.step(self.frame - self.images, active)


Sampler = Callable[..., Tensor]
"""A torch sampling function called as ``sampler(shape, generator=..., device=..., **kwargs)``: torch.rand,
torch.randn, or ``functools.partial(torch.randint, low, high)``."""


def sample_seed(seed: int, sample_id: str) -> int:
    """A 63-bit generator seed from the attack seed and a sample id, the same in every process (SHA-256,
    not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SampleRandom:
    """Every random draw of one attack call, made per sample.

    Without ``ids`` one generator seeded with the attack seed serves the batch on its device (a sample's
    draws then depend on its batch). With ``ids`` sample i draws from its own CPU generator seeded from
    (seed, ids[i]) and the draws move to the batch's device, so a sample gets the same draws alone, in any
    batch, on any DDP rank and on any device.
    """

    def __init__(
        self, seed: int, batch: int, device: torch.device | str = "cpu", ids: Sequence[str] | None = None
    ) -> None:
        if ids is not None and len(ids) != batch:
            raise ValueError(f"ids must name every image: got {len(ids)} ids for {batch} images")
        self.ids = None if ids is None else list(ids)
        self.batch = batch
        self.device = torch.device(device)
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        self._sample_generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.ids or []]

    def draw(self, sampler: Sampler, shape: Sequence[int], **kwargs: Any) -> Tensor:
        """(B, *shape): an independent draw of ``shape`` for every sample."""
        if self.ids is None:
            return sampler((self.batch, *shape), generator=self._generator, device=self.device, **kwargs)
        return self.each(lambda generator, device: sampler(tuple(shape), generator=generator, device=device, **kwargs))

    def shared(self, sampler: Sampler, shape: Sequence[int], **kwargs: Any) -> Tensor:
        """Without ids one draw (1, *shape) that the whole batch shares; with ids (B, *shape), one per sample."""
        if self.ids is None:
            return sampler((1, *shape), generator=self._generator, device=self.device, **kwargs)
        return self.draw(sampler, shape, **kwargs)

    def subset(self, rows: Tensor) -> SampleRandom:
        """The draws of the samples ``rows`` only: with ids their own generators (the other samples' generators
        do not advance); without ids the batch's generator, whose ``draw`` then makes len(rows) draws."""
        view = copy.copy(self)
        view.batch = len(rows)
        if self.ids is not None:
            view.ids = [self.ids[i] for i in rows.tolist()]
            view._sample_generators = [self._sample_generators[i] for i in rows.tolist()]
        return view

    def each(self, draw: Callable[[torch.Generator, torch.device], Tensor]) -> Tensor:
        """(B, ...) stacked from ``draw(generator, device)`` called once per sample, in batch order."""
        if self.ids is None:
            return torch.stack([draw(self._generator, self.device) for _ in range(self.batch)])
        cpu = torch.device("cpu")
        return torch.stack([draw(generator, cpu) for generator in self._sample_generators]).to(self.device)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode inside the block; each submodule's own mode restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextlib.contextmanager
def frozen_model(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients while attacking; restores modes and flags on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with evaluation_mode(model), torch.inference_mode(False), torch.enable_grad():
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def input_gradient(objective: Objective, images: Tensor, target: Any, sign: float = 1.0) -> tuple[Tensor, Tensor]:
    """Gradient of ``sign * sum(loss)`` w.r.t. the input only, and the per-sample loss (detached)."""
    x = images.detach().clone().requires_grad_(True)
    loss = objective.loss(objective.forward(x), target)
    (grad,) = torch.autograd.grad(sign * loss.sum(), x)
    return grad.detach(), loss.detach()


MAX_INTEGER = 2**63 - 1  # counts, sizes and seeds end up in int64 tensors and generators


def check_number(name: str, value: Any) -> None:
    """Raise ValueError naming the argument unless ``value`` is a real number (not a bool, string or None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r} ({type(value).__name__})")


def is_finite(value: float) -> bool:
    """``math.isfinite``, False for integers too large for a float as well."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_positive(name: str, value: float, allow_zero: bool = True) -> None:
    """Raise ValueError naming the argument unless ``value`` is a finite number >= 0 (> 0 without zero)."""
    check_number(name, value)
    if not is_finite(value) or value < 0 or (not allow_zero and value == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def check_budget(name: str, value: float, norm: str, allow_zero: bool = True) -> None:
    """``check_positive``, and at most 1 for an Linf budget: on [0, 1] values eps = 1 already reaches every
    image, so more is a unit mistake (e.g. 8 for 8/255). L2 and L1 budgets may exceed 1 (their largest useful
    value, sqrt(C H W) or C H W, depends on the image size)."""
    check_positive(name, value, allow_zero)
    if norm == "linf" and value > 1:
        raise ValueError(f"{name} must be at most 1 for an Linf budget on [0, 1] values (e.g. 8/255), got {value!r}")


def check_fraction(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise ValueError naming the argument unless ``value`` lies in (0, 1] ([0, 1] with ``allow_zero``)."""
    check_number(name, value)
    if not (0 <= value <= 1) or (not allow_zero and value == 0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def check_steps(name: str, value: int, minimum: int = 1) -> None:
    """Raise ValueError naming the argument unless ``value`` is an integer in [``minimum``, 2**63 - 1]."""
    check_number(name, value)
    if not is_finite(value) or int(value) != value or not minimum <= value <= MAX_INTEGER:
        raise ValueError(f"{name} must be an integer >= {minimum} (and < 2**63), got {value!r}")


def check_target(objective: Objective, images: Tensor, target: Any) -> None:
    """``objective.check_target(images, target)`` where the objective has one (objectives need not)."""
    check = getattr(objective, "check_target", None)
    if check is not None:
        check(images, target)


def fooled_fraction(hit: Tensor) -> Tensor:
    """Per-sample (B,) fraction of positions fooled, from a (B, ...) bool mask: 0 or 1 for one position
    (classification), a pixel or proposal average for dense tasks."""
    return hit.float().reshape(hit.shape[0], -1).mean(dim=1)


def plain_setting(value: Any) -> Any:
    """A setting as plain JSON-able data: numbers, strings and None as they are, an attack as its settings,
    a threat model by its ``name``, sequences element-wise, anything else by its class name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Attack):
        return {"class": type(value).__name__, **value.settings}
    if isinstance(getattr(value, "name", None), str):
        return value.name
    if isinstance(value, (list, tuple)):
        return [plain_setting(item) for item in value]
    return type(value).__name__


def constructor_signature(cls: type) -> tuple[inspect.Signature, Callable[..., None]]:
    """The signature an attack class is constructed with, and the function that does the work.

    A class without its own ``__init__`` takes its parent's arguments, with its ``defaults`` as new default
    values and without its ``fixed`` ones. A class whose ``__init__`` ends in ``**options`` takes its own
    arguments and then those of its parent (keyword-only), ``defaults`` and ``fixed`` applied the same way.
    """
    parent = cls.__mro__[1].__init__
    own = cls.__dict__.get("__init__")
    defaults, fixed = cls.__dict__.get("defaults", {}), cls.__dict__.get("fixed", {})
    own_parameters = list(inspect.signature(own).parameters.values()) if own else []
    if own and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own_parameters):
        if defaults or fixed:
            raise TypeError(f"{cls.__name__}: defaults/fixed need an __init__ that passes **options on")
        return inspect.signature(own), own
    inherited = inspect.signature(parent).parameters
    unknown = sorted((set(defaults) | set(fixed)) - set(inherited))
    if unknown:
        raise TypeError(f"{cls.__name__}: defaults/fixed name arguments its parent does not take: {unknown}")
    named = [p for p in own_parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    kind = inspect.Parameter.KEYWORD_ONLY if own else None
    taken = {p.name for p in named}
    parameters = named or [inherited["self"]]
    parameters += [
        p.replace(default=defaults.get(name, p.default), kind=kind or p.kind)
        for name, p in inherited.items()
        if name not in fixed and name not in taken and name != "self"
    ]
    return inspect.Signature(parameters), own or parent


def configured_init(cls: type) -> Callable[..., None]:
    """``cls``'s constructor (see ``constructor_signature``) that first records the outermost call's
    arguments, defaults filled in, for ``Attack.settings``."""
    signature, body = constructor_signature(cls)
    fixed = cls.__dict__.get("fixed", {})

    def __init__(self: Attack, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])
        if "_arguments" not in self.__dict__:
            self._arguments = arguments
        body(self, **arguments, **fixed)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = body.__doc__
    return __init__


class Attack:
    """Base class: configured once, called on a batch; subclasses implement ``run``.

    ``__call__`` applies the model-unchanged rule, seeds the call's random draws (per sample when the
    samples' ``ids`` are given, see ``SampleRandom``), checks the input (``check_images``, the objective's
    ``check_target``; docs/attacks.md, "Input rules") and clamps the output to [0, 1].
    ``settings`` records every constructor argument with its effective value, for every subclass. A
    variant that only changes its parent's configuration writes no constructor: it declares ``defaults``
    (new default values) and ``fixed`` (arguments it sets and does not accept); one that adds arguments
    takes them and passes ``**options`` on (see ``constructor_signature``).

    ``clean_unfooled`` is not a setting but a caller's promise: no clean image it passes already reaches the
    attack's goal (robust-accuracy mode passes only correctly classified samples). Attacks that check the clean
    images to stop early (the gradient loop, APGD, Square) then skip that forward pass, with the same result.
    """

    name: str = "attack"
    access: ClassVar[str] = "white-box"  # what it reads of the model: "white-box", "black-box" (scores), "transfer"
    clean_unfooled: bool = False
    defaults: ClassVar[dict[str, Any]] = {}
    fixed: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if any(name in cls.__dict__ for name in ("__init__", "defaults", "fixed")):
            cls.__init__ = configured_init(cls)

    def __init__(self, seed: int = 0) -> None:
        check_steps("seed", seed, minimum=0)
        self.seed = int(seed)

    @property
    def settings(self) -> dict[str, Any]:
        """Every constructor argument (and each ``fixed`` one) with its effective value as plain data: the
        attribute of the same name where the attack keeps one (e.g. the step size a None ``alpha`` became),
        else the argument as passed or defaulted."""
        arguments = dict(getattr(self, "_arguments", {"seed": self.seed}))
        for cls in reversed(type(self).__mro__):
            arguments |= cls.__dict__.get("fixed", {})
        return {name: plain_setting(getattr(self, name, value)) for name, value in arguments.items()}

    def configured(self, **changes: Any) -> Attack:
        """A new attack of this class built from this one's constructor arguments with ``changes`` applied."""
        return type(self)(**(getattr(self, "_arguments", {"seed": self.seed}) | changes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings.items())})"

    def __call__(
        self, objective: Objective, images: Tensor, target: Any, ids: Sequence[str] | None = None
    ) -> AttackResult:
        check_images(images, objective.model)
        check_target(objective, images, target)
        random = SampleRandom(self.seed, len(images), images.device, ids)
        clean = images.detach().clone()
        with frozen_model(objective.model):
            result = self.run(objective, clean, target, random)
        result.adv_images = result.adv_images.detach().clamp(0.0, 1.0)
        return result

    def run(self, objective: Objective, images: Tensor, target: Any, random: SampleRandom) -> AttackResult:
        raise NotImplementedError
