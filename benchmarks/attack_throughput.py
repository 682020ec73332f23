"""Attack throughput: our attacks against torchattacks and ART on one model, in one run.

Measures the floor (one forward + input-backward), then PGD-10, FGSM, MI-FGSM, CW-L2 and DeepFool from
``attacks`` and, when installed (the optional ``peers`` extra), the same attacks from torchattacks and
ART. Implementations of one attack are timed round-robin (warm-up first, then the median of repeats), so
a load change on a shared machine hits all of them alike. A separate table gives the speed-up of
``early_stop`` on our gradient-loop attacks. Run: ``python -m benchmarks.attack_throughput``.

``--speed`` times the speed options instead (docs/performance.md): ours in fp32, bf16, bf16 + channels_last
and bf16 + channels_last + torch.compile against torchattacks (fp32) for PGD-10, APGD-CE and CW-L2 and
against pyautoattack for AutoAttack (standard), on a timm classifier or (``--task segmentation``) an smp
U-Net, with images/s, peak GPU memory and the ratios. ``--json PATH`` writes the results (after each
attack, so a run cut short keeps what it measured).

``--robust`` times robust accuracy on a trained model instead: the default benchmark's fundus classifier
(loaded from ``--models``, the model cache of ``medadv run``, or trained there) on its whole test split, per
budget our PGD-10 in robust-accuracy mode (only the samples classified correctly, each stopped once fooled)
against torchattacks' PGD-10 on every sample, and our ``autoattack`` (standard) against pyautoattack's, with
the robust accuracy each reaches and the speed-ups (goals: 3x and 2x).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attacks.apgd import APGD
from attacks.autoattack import AutoAttack
from attacks.base import Attack, AttackResult, Objective, input_gradient
from attacks.cw import CWL2
from attacks.deepfool import DeepFool
from attacks.gradient import FGSM, MIFGSM, PGD
from callbacks.robust_accuracy import attack_rows, correct_rows, stopping_early
from callbacks.speed import channels_last_images, evaluation_objective
from lightning_modules.objectives import ClassificationObjective, SegmentationObjective

PEERS = ("torchattacks", "art")
PGD_TARGET = 1.05  # ours PGD-10 at most this many times 10 forward+backward passes
TORCHATTACKS_TARGET = 1.0  # ours at least as fast as torchattacks
ART_TARGET = 1 / 1.5  # ours at least 1.5 times as fast as ART


@dataclass(frozen=True)
class Setting:
    """One attack configuration, shared by every library that implements it."""

    name: str
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 10
    decay: float = 1.0
    const: float = 1.0
    lr: float = 0.01
    overshoot: float = 0.02
    candidates: int = 10


SETTINGS = {
    "pgd10": Setting("pgd10"),
    "fgsm": Setting("fgsm", steps=1),
    "mi_fgsm": Setting("mi_fgsm"),
    "cw_l2": Setting("cw_l2", steps=50),
    "deepfool": Setting("deepfool", steps=50),
}

EARLY_STOP = ("pgd10", "fgsm", "mi_fgsm")  # the settings run by our gradient loop, which takes early_stop

Run = Callable[[Tensor, Tensor], Tensor]


def our_attack(setting: Setting, early_stop: bool = False) -> Attack:
    """Our attack for ``setting`` (``early_stop`` for the EARLY_STOP settings). CW-L2 runs one search step
    at c = 1 with early abort (checked every steps / 10), as torchattacks' CW does."""
    builders: dict[str, Callable[[], Attack]] = {
        "pgd10": lambda: PGD(eps=setting.eps, alpha=setting.alpha, steps=setting.steps, early_stop=early_stop),
        "fgsm": lambda: FGSM(eps=setting.eps, early_stop=early_stop),
        "mi_fgsm": lambda: MIFGSM(
            eps=setting.eps, alpha=setting.alpha, steps=setting.steps, decay=setting.decay, early_stop=early_stop
        ),
        "cw_l2": lambda: CWL2(initial_const=setting.const, binary_search_steps=1, steps=setting.steps, lr=setting.lr),
        "deepfool": lambda: DeepFool(steps=setting.steps, overshoot=setting.overshoot, candidates=setting.candidates),
    }
    return builders[setting.name]()


def torchattacks_runs(model: nn.Module) -> dict[str, Run]:
    """torchattacks' versions of the shared settings (imported lazily; absent peers are skipped)."""
    import torchattacks

    s = SETTINGS
    attacks = {
        "pgd10": torchattacks.PGD(model, eps=s["pgd10"].eps, alpha=s["pgd10"].alpha, steps=s["pgd10"].steps),
        "fgsm": torchattacks.FGSM(model, eps=s["fgsm"].eps),
        "mi_fgsm": torchattacks.MIFGSM(
            model,
            eps=s["mi_fgsm"].eps,
            alpha=s["mi_fgsm"].alpha,
            steps=s["mi_fgsm"].steps,
            decay=s["mi_fgsm"].decay,
        ),
        "cw_l2": torchattacks.CW(model, c=s["cw_l2"].const, kappa=0, steps=s["cw_l2"].steps, lr=s["cw_l2"].lr),
        "deepfool": torchattacks.DeepFool(model, steps=s["deepfool"].steps, overshoot=s["deepfool"].overshoot),
    }
    return {name: attack.__call__ for name, attack in attacks.items()}


def art_runs(model: nn.Module, images: Tensor, classes: int) -> dict[str, Run]:
    """ART's versions of the shared settings, on numpy arrays (conversions are part of the cost)."""
    import numpy as np
    from art.attacks import evasion
    from art.estimators.classification import PyTorchClassifier

    estimator = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(images.shape[1:]),
        nb_classes=classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if images.is_cuda else "cpu",
    )
    batch, s = len(images), SETTINGS
    attacks = {
        "pgd10": evasion.ProjectedGradientDescentPyTorch(
            estimator,
            norm=np.inf,
            eps=s["pgd10"].eps,
            eps_step=s["pgd10"].alpha,
            max_iter=s["pgd10"].steps,
            num_random_init=1,
            batch_size=batch,
            verbose=False,
        ),
        "fgsm": evasion.FastGradientMethod(estimator, eps=s["fgsm"].eps, batch_size=batch),
        "mi_fgsm": evasion.MomentumIterativeMethod(
            estimator,
            eps=s["mi_fgsm"].eps,
            eps_step=s["mi_fgsm"].alpha,
            decay=s["mi_fgsm"].decay,
            max_iter=s["mi_fgsm"].steps,
            batch_size=batch,
            verbose=False,
        ),
        "cw_l2": evasion.CarliniL2Method(
            estimator,
            learning_rate=s["cw_l2"].lr,
            binary_search_steps=1,
            max_iter=s["cw_l2"].steps,
            initial_const=s["cw_l2"].const,
            batch_size=batch,
            verbose=False,
        ),
        "deepfool": evasion.DeepFool(
            estimator,
            max_iter=s["deepfool"].steps,
            epsilon=s["deepfool"].overshoot,
            nb_grads=s["deepfool"].candidates,
            batch_size=batch,
            verbose=False,
        ),
    }

    def numpy_run(attack: object) -> Run:
        def run(x: Tensor, y: Tensor) -> Tensor:
            return torch.from_numpy(attack.generate(x.cpu().numpy(), y=y.cpu().numpy())).to(x.device)

        return run

    return {name: numpy_run(attack) for name, attack in attacks.items()}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_round_robin(
    runs: dict[str, Callable[[], object]],
    warmup: int,
    repeats: int,
    device: torch.device,
    clock: str,
    peaks: dict[str, int] | None = None,
) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per implementation, timed in turn so shared-machine load hits all alike, and each
    implementation's last output. ``clock`` "cpu" counts this process's CPU time (all its threads). On CUDA,
    ``peaks`` (when given) receives each implementation's peak allocated bytes over its timed runs."""
    now = CLOCKS[clock]
    outputs = {name: run() for name, run in runs.items() for _ in range(warmup)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronise(device)
            if peaks is not None and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = now()
            outputs[name] = run()
            synchronise(device)
            seconds[name].append(now() - start)
            if peaks is not None and device.type == "cuda":
                peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
    return {name: statistics.median(values) for name, values in seconds.items()}, outputs


def fooled(model: nn.Module, output: AttackResult | Tensor, labels: Tensor) -> float:
    adv = output.adv_images if isinstance(output, AttackResult) else output
    with torch.no_grad():
        return (model(adv).argmax(dim=1) != labels).float().mean().item()


def gradient_evaluations(setting: Setting, result: AttackResult, classes: int) -> int:
    """T, the input-gradient evaluations our attack made: the steps of PGD, FGSM and MI-FGSM, the Adam
    steps CW-L2 ran before aborting, and for DeepFool iterations x (candidates - 1), each iteration being
    one forward and one backward per other class, so T x (forward + backward) overstates its work."""
    if setting.name in ("pgd10", "fgsm", "mi_fgsm"):
        return setting.steps
    iterations = int(result.trace.iterations.max())
    return iterations * (min(setting.candidates, classes) - 1) if setting.name == "deepfool" else iterations


def ratio_notes(name: str, medians: dict[str, float]) -> dict[str, str]:
    """Per implementation, the ratio printed beside it and its verdict against the targets."""
    notes = {"T x fwd+bwd": ""}
    ours = medians["ours"]
    relative = ours / medians["T x fwd+bwd"]
    notes["ours"] = f"ours / (T x fwd+bwd) = {relative:.3f}"
    if name == "pgd10":
        notes["ours"] += f" (<= {PGD_TARGET}: {verdict(relative, PGD_TARGET)})"
    for peer, target in (("torchattacks", TORCHATTACKS_TARGET), ("art", ART_TARGET)):
        if peer in medians:
            ratio = ours / medians[peer]
            notes[peer] = f"ours / {peer} = {ratio:.3f} (<= {target:.3f}: {verdict(ratio, target)})"
    return notes


def early_stop_speedups(
    objective: ClassificationObjective, images: Tensor, labels: Tensor, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Times each EARLY_STOP attack of ``args.attacks`` with and without ``early_stop`` (round-robin, as the
    main table) and prints the speed-up, the fooled fractions and the mean steps taken with early stop."""
    names = [name for name in args.attacks if name in EARLY_STOP]
    if not names:
        return {}
    header = f"{'attack':<9} {'without':>8} {'with':>8} {'speed-up':>8} {'fooled without / with':>22} {'steps':>6}"
    print("\nearly stop (ours; labels are the clean predictions, so every sample starts correct)")
    print(header + "\n" + "-" * len(header))
    model, device = objective.model, images.device
    results: dict[str, dict[str, float]] = {}
    for name in names:
        attacks = {"without": our_attack(SETTINGS[name]), "with": our_attack(SETTINGS[name], early_stop=True)}
        runs = {key: lambda attack=attack: attack(objective, images, labels) for key, attack in attacks.items()}
        medians, outputs = time_round_robin(runs, args.warmup, args.repeats, device, args.clock)
        results[name] = medians
        rates = " / ".join(f"{fooled(model, outputs[key], labels):.2f}" for key in attacks)
        steps = outputs["with"].trace.iterations.float().mean().item()
        without, with_stop = medians["without"], medians["with"]
        print(f"{name:<9} {without:>8.3f} {with_stop:>8.3f} {without / with_stop:>7.2f}x {rates:>22} {steps:>6.1f}")
    return results


@dataclass(frozen=True)
class Variant:
    """One way of running our attacks: autocast precision, channels_last model and images, torch.compile."""

    name: str
    precision: str = "32"
    channels_last: bool = False
    compile: bool = False


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("fp32"),
        Variant("bf16", "bf16-mixed"),
        Variant("bf16+cl", "bf16-mixed", channels_last=True),
        Variant("bf16+cl+compile", "bf16-mixed", channels_last=True, compile=True),
    )
}
SPEED_ATTACKS = ("pgd10", "apgd_ce", "cw_l2", "autoattack")
CLASSIFICATION_ONLY = ("autoattack",)
TORCHATTACKS_NOTE = "torchattacks is not installed (pip install --no-deps torchattacks==3.5.1): no torchattacks column"


def speed_attack(name: str) -> Attack:
    """Our attack of the speed table: PGD-10 and CW-L2 as in the peer table, APGD-CE (100 steps) and the
    standard AutoAttack at AutoAttack's settings, all at eps 8/255."""
    if name in SETTINGS:
        return our_attack(SETTINGS[name])
    eps = SETTINGS["pgd10"].eps
    return APGD(eps=eps) if name == "apgd_ce" else AutoAttack(eps=eps)


def reference_run(
    name: str, model: nn.Module, classes: int, device: torch.device, eps: float = SETTINGS["pgd10"].eps
) -> tuple[str, Run] | None:
    """The peer timed beside ours (fp32) for attack ``name``: torchattacks' PGD, APGD-CE or CW, or pyautoattack's
    standard AutoAttack at ``eps`` (its targeted stages limited to K - 1 targets, as ours); None when the library
    is not installed."""
    if name == "autoattack":
        if importlib.util.find_spec("pyautoattack") is None:
            return None
        import pyautoattack

        adversary = pyautoattack.AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device=device)
        for targeted in (adversary.apgd_targeted, adversary.fab):  # as ours: at most K - 1 target classes
            targeted.n_target_classes = min(targeted.n_target_classes, classes - 1)

        def run(images: Tensor, labels: Tensor) -> Tensor:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # it seeds torch's RNG
                crafted = adversary.run_standard_evaluation(images, labels, batch_size=len(images))
            return crafted[0] if isinstance(crafted, tuple) else crafted

        return "pyautoattack", run
    if importlib.util.find_spec("torchattacks") is None:
        return None
    if name == "apgd_ce":
        import torchattacks

        return "torchattacks", torchattacks.APGD(model, norm="Linf", eps=eps, steps=100, loss="ce").__call__
    return "torchattacks", torchattacks_runs(model)[name]


def speed_model(args: argparse.Namespace) -> tuple[nn.Module, Callable[[nn.Module], Objective]]:
    """The network of the speed table (random weights, no download) and its objective's class."""
    if args.task == "classification":
        import timm

        return timm.create_model(args.arch, pretrained=False, num_classes=args.num_classes), ClassificationObjective
    import segmentation_models_pytorch as smp

    return smp.Unet(args.encoder, encoder_weights=None, classes=args.num_classes), SegmentationObjective


def variant_objective(variant: Variant, model: nn.Module, build: Callable[[nn.Module], Objective]) -> Objective:
    """The objective a variant runs on: its own copy of the model (channels_last when asked), compiled and
    under autocast as the evaluation callback builds it."""
    model = copy.deepcopy(model)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluation_objective(build(model), variant.precision, variant.compile)


def error_rate(objective: Objective, output: AttackResult | Tensor, target: Tensor) -> float:
    """Share of samples (pixels for segmentation) whose fp32 prediction on the adversarial images is wrong."""
    adv = output.adv_images if isinstance(output, AttackResult) else output
    with torch.no_grad():
        return (objective.predict(objective.forward(adv.contiguous())) != target).float().mean().item()


def speed_rows(
    attack: str,
    medians: dict[str, float],
    outputs: dict[str, object],
    peaks: dict[str, int],
    objective: Objective,
    target: Tensor,
    batch: int,
    peer: str | None,
) -> list[dict[str, Any]]:
    """One row per implementation: seconds, images/s, peak MiB (None off CUDA), error rate, and the speed-ups
    over ours in fp32 and over the peer (seconds of that one / seconds of this one)."""
    rows = []
    for impl, seconds in medians.items():
        peak = peaks.get(impl)
        rows.append(
            {
                "attack": attack,
                "impl": impl,
                "seconds": seconds,
                "images_per_s": batch / seconds,
                "peak_mib": None if peak is None else peak / 2**20,
                "error_rate": error_rate(objective, outputs[impl], target),
                "speedup_vs_fp32": medians["ours fp32"] / seconds if "ours fp32" in medians else None,
                "speedup_vs_peer": medians[peer] / seconds if peer else None,
            }
        )
    return rows


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def speed_table(args: argparse.Namespace) -> dict[str, Any]:
    """Time every variant of ours and the peer per attack (round-robin), print the table and return it as
    ``{"config", "floor", "rows", "notes"}``, written to ``args.json`` after each attack when given."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model, build = speed_model(args)
    model = model.to(device).eval().requires_grad_(False)
    objective = build(model)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    images = images.to(device)
    with torch.no_grad():
        target = objective.predict(objective.forward(images))
    variants = [VARIANTS[name] for name in args.variants]
    objectives = {variant.name: variant_objective(variant, model, build) for variant in variants}
    inputs = {variant.name: channels_last_images(images) if variant.channels_last else images for variant in variants}
    network = args.arch if args.task == "classification" else f"U-Net ({args.encoder})"
    config = {
        "task": args.task,
        "model": network,
        "classes": args.num_classes,
        "batch": args.batch,
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "clock": args.clock,
        "variants": {variant.name: asdict(variant) for variant in variants},
    }
    gradient = {"forward+backward": lambda: input_gradient(objective, images, target)}
    floor = time_round_robin(gradient, args.warmup, args.repeats, device, args.clock)[0]["forward+backward"]
    report: dict[str, Any] = {
        "config": config,
        "floor": {"seconds": floor, "images_per_s": args.batch / floor},
        "rows": [],
        "notes": [],
    }
    print(
        f"{network}, batch {args.batch} x 3 x {args.size} x {args.size}, {config['device']}, "
        f"{config['threads']} threads; one fp32 forward + input-backward {floor:.4f} s"
    )
    header = (
        f"{'attack':<10} {'impl':<22} {'seconds':>8} {'img/s':>8} {'peak MiB':>9} {'error':>6} "
        f"{'vs fp32':>8} {'vs peer':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for name in args.speed_attacks:
        if name in CLASSIFICATION_ONLY and args.task != "classification":
            report["notes"].append(f"{name}: classification only, not run on {args.task}")
            continue
        attack = speed_attack(name)
        runs: dict[str, Callable[[], object]] = {
            f"ours {variant}": lambda variant=variant, attack=attack: attack(
                objectives[variant], inputs[variant], target
            )
            for variant in objectives
        }
        peer = reference_run(name, model, args.num_classes, device) if args.task == "classification" else None
        if peer is not None:
            runs[peer[0]] = lambda run=peer[1]: run(images, target)
        elif args.task == "classification":
            report["notes"].append(
                f"{name}: "
                + (TORCHATTACKS_NOTE if name != "autoattack" else "pyautoattack is not installed: no reference column")
            )
        peaks: dict[str, int] = {}
        medians, outputs = time_round_robin(runs, args.warmup, args.repeats, device, args.clock, peaks)
        rows = speed_rows(name, medians, outputs, peaks, objective, target, args.batch, peer and peer[0])
        for row in rows:
            peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            print(
                f"{name:<10} {row['impl']:<22} {row['seconds']:>8.3f} {row['images_per_s']:>8.1f} {peak:>9} "
                f"{row['error_rate']:>6.2f} {ratio(row['speedup_vs_fp32']):>8} {ratio(row['speedup_vs_peer']):>8}"
            )
        report["rows"] += rows
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    for note in report["notes"]:
        print(f"note: {note}")
    return report


ROBUST_GOALS = {"pgd10": 3.0, "autoattack": 2.0}  # speed-up over the peer at the same robust accuracy


def robust_data(models: Path) -> tuple[nn.Module, Tensor, Tensor]:
    """The default benchmark's fundus classifier (from the cache in ``models``, trained there when absent; eval
    mode, frozen) and its whole test split (images, labels)."""
    from benchmarks.grid import load_benchmark, resolve_config
    from benchmarks.model_cache import load_or_train

    spec = next(spec for spec in load_benchmark(resolve_config("default")).models if spec.dataset == "synthetic_fundus")
    trained = load_or_train(spec, models)
    trained.datamodule.setup("test")
    batches = list(trained.datamodule.test_dataloader())
    images = torch.cat([batch["image"] for batch in batches])
    labels = torch.cat([batch["target"] for batch in batches])
    return trained.module.eval().requires_grad_(False), images, labels


def robust_runs(
    model: nn.Module, eps: float, classes: int, attacks: Sequence[str] = tuple(ROBUST_GOALS)
) -> dict[str, dict[str, Callable[[Tensor, Tensor], Tensor]]]:
    """Per attack of ``attacks``, each implementation as ``run(images, labels) -> adversarial images``: ours in
    robust-accuracy mode (PGD-10 with early stop on the correctly classified samples; the AutoAttack cascade,
    which works so already) and the peer on every sample, where installed."""
    objective = ClassificationObjective(model)
    alpha = SETTINGS["pgd10"].alpha * eps / SETTINGS["pgd10"].eps  # torchattacks' 2/255 at 8/255, scaled
    pgd = stopping_early(PGD(eps=eps, alpha=alpha, steps=10))

    def robust_mode(images: Tensor, labels: Tensor) -> Tensor:
        """As the evaluation callback runs it: the correct rows only (no clean check of the attack's own),
        per-sample random starts."""
        with torch.no_grad():
            rows = correct_rows(objective.predict(objective.forward(images)), labels)
        ids = [str(i) for i in range(len(images))]
        return attack_rows(partial(pgd, objective), images, labels, ids, rows).adv_images

    runs: dict[str, dict[str, Callable[[Tensor, Tensor], Tensor]]] = {
        "pgd10": {"ours (robust-accuracy mode)": robust_mode},
        "autoattack": {"ours": lambda images, labels: AutoAttack(eps=eps)(objective, images, labels).adv_images},
    }
    if importlib.util.find_spec("torchattacks") is not None:
        import torchattacks

        runs["pgd10"]["torchattacks"] = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=10).__call__
    peer = reference_run("autoattack", model, classes, torch.device("cpu"), eps)
    if peer is not None:
        runs["autoattack"][peer[0]] = peer[1]
    return {attack: runs[attack] for attack in attacks}


def robust_table(args: argparse.Namespace) -> dict[str, Any]:
    """Time ours and the peer per attack and budget on the trained classifier (round-robin), print seconds, robust
    accuracy and the speed-up, and return ``{"config", "rows"}`` (written to ``args.json`` when given)."""
    model, images, labels = robust_data(Path(args.models))
    with torch.no_grad():
        clean = (model(images).argmax(dim=1) == labels).float().mean().item()
    classes = int(model(images[:1]).shape[1])
    config = {"model": "default benchmark synthetic_fundus classifier", "test_images": len(images), "clean": clean,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "clock": args.clock,
              "warmup": args.warmup, "repeats": args.repeats}
    print(f"fundus classifier, whole test split: {len(images)} images, clean accuracy {clean:.3f}, "
          f"{config['threads']} threads, {args.clock} clock")
    header = f"{'attack':<10} {'eps':>6} {'impl':<28} {'seconds':>8} {'robust acc':>10} {'speed-up':>9} goal"
    print(header + "\n" + "-" * len(header))
    report: dict[str, Any] = {"config": config, "rows": []}
    for eps in args.robust_eps:
        for attack, runs in robust_runs(model, eps / 255, classes, args.robust_attacks).items():
            timed = {impl: lambda run=run: run(images, labels) for impl, run in runs.items()}
            medians, outputs = time_round_robin(timed, args.warmup, args.repeats, images.device, args.clock)
            ours = next(iter(medians))
            for impl, seconds in medians.items():
                with torch.no_grad():
                    robust = (model(outputs[impl]).argmax(dim=1) == labels).float().mean().item()
                speedup = seconds / medians[ours] if impl != ours else None
                row = {"attack": attack, "eps": eps, "impl": impl, "seconds": seconds, "robust_accuracy": robust,
                       "ours_speedup": speedup}
                report["rows"].append(row)
                goal = "" if speedup is None else f">= {ROBUST_GOALS[attack]:.0f}x: " + (
                    "pass" if speedup >= ROBUST_GOALS[attack] else "FAIL")
                print(f"{attack:<10} {eps:>4g}/255 {impl:<28} {seconds:>8.2f} {robust:>10.3f} {ratio(speedup):>9} "
                      + goal)
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def available_peers(requested: Sequence[str]) -> list[str]:
    modules = {"torchattacks": "torchattacks", "art": "art"}
    found = [peer for peer in requested if importlib.util.find_spec(modules[peer]) is not None]
    for peer in sorted(set(requested) - set(found)):
        print(f"peer {peer} is not installed: skipped (the optional peers extra)")
    return found


def verdict(ratio: float, target: float) -> str:
    return "pass" if ratio <= target else "FAIL"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18", help="timm model name (pretrained=False)")
    parser.add_argument("--num-classes", type=int, default=5, help="classes (5: DR grading)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attacks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", default="wall", choices=list(CLOCKS), help="cpu: robust on a shared machine")
    parser.add_argument("--speed", action="store_true", help="time the speed options instead of the peer table")
    parser.add_argument(
        "--task",
        default="classification",
        choices=["classification", "segmentation"],
        help="--speed: a timm classifier (--arch) or an smp U-Net (--encoder)",
    )
    parser.add_argument("--encoder", default="resnet34", help="--speed --task segmentation: U-Net encoder")
    parser.add_argument("--speed-attacks", nargs="+", default=list(SPEED_ATTACKS), choices=list(SPEED_ATTACKS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--robust", action="store_true", help="time robust accuracy on the trained fundus classifier")
    parser.add_argument("--robust-eps", nargs="+", type=float, default=[1.0, 8.0], help="--robust budgets, in /255")
    parser.add_argument("--robust-attacks", nargs="+", default=list(ROBUST_GOALS), choices=list(ROBUST_GOALS))
    parser.add_argument("--models", default="runs/models", help="--robust: the model cache of medadv run")
    args = parser.parse_args(argv)
    for name in ("num_classes", "batch", "size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and return {attack: {implementation: median seconds}}, the
    early-stop timings under "{attack} early_stop": {"without": ..., "with": ...}; with ``--speed`` the
    speed table (``speed_table``)."""
    import timm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speed:
        return speed_table(args)
    if args.robust:
        return robust_table(args)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = timm.create_model(args.arch, pretrained=False, num_classes=args.num_classes).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    objective = ClassificationObjective(model)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed))
    images = images.to(device)
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    peers = available_peers(args.peers)
    print(
        f"{args.arch} (pretrained=False, {args.num_classes} classes, eval), batch {args.batch} x 3 x "
        f"{args.size} x {args.size}, {device}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    gradient = {"forward+backward": lambda: input_gradient(objective, images, labels)}
    floor = time_round_robin(gradient, args.warmup, args.repeats, device, args.clock)[0]["forward+backward"]
    print(f"one forward + input-backward: {floor:.4f} s ({args.batch / floor:.1f} images/s, {args.clock} clock)\n")
    peer_runs = {}
    if "torchattacks" in peers:
        peer_runs["torchattacks"] = torchattacks_runs(model)
    if "art" in peers:
        peer_runs["art"] = art_runs(model, images, args.num_classes)
    header = f"{'attack':<9} {'T':>4} {'impl':<13} {'seconds':>8} {'img/s':>8} {'fooled':>6}  ratio (target)"
    print(header + "\n" + "-" * len(header))
    results: dict[str, dict[str, float]] = {}
    for name in args.attacks:
        setting = SETTINGS[name]
        attack = our_attack(setting)
        steps = gradient_evaluations(setting, attack(objective, images, labels), args.num_classes)
        runs: dict[str, Callable[[], object]] = {
            "T x fwd+bwd": lambda steps=steps: [input_gradient(objective, images, labels) for _ in range(steps)],
            "ours": lambda attack=attack: attack(objective, images, labels),
        }
        runs |= {peer: lambda run=peer_runs[peer][name]: run(images, labels) for peer in peer_runs}
        medians, outputs = time_round_robin(runs, args.warmup, args.repeats, device, args.clock)
        results[name] = medians
        notes = ratio_notes(name, medians)
        for impl, seconds in medians.items():
            rate = "" if impl == "T x fwd+bwd" else f"{fooled(model, outputs[impl], labels):.2f}"
            print(
                f"{name:<9} {steps:>4} {impl:<13} {seconds:>8.3f} {args.batch / seconds:>8.1f} {rate:>6}  {notes[impl]}"
            )
    speedups = early_stop_speedups(objective, images, labels, args)
    results |= {f"{name} early_stop": medians for name, medians in speedups.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
