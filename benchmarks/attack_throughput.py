"""Attack throughput: our attacks against torchattacks and ART on one model, in one run.

Measures the floor (one forward + input-backward), then PGD-10, FGSM, MI-FGSM, CW-L2 and DeepFool from
``attacks`` and, when installed (the optional ``peers`` extra), the same attacks from torchattacks and
ART. Implementations of one attack are timed round-robin (warm-up first, then the median of repeats), so
a load change on a shared machine hits all of them alike. A separate table gives the speed-up of
``early_stop`` on our gradient-loop attacks. Run: ``python -m benchmarks.attack_throughput``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attacks.base import Attack, AttackResult, input_gradient
from attacks.cw import CWL2
from attacks.deepfool import DeepFool
from attacks.gradient import FGSM, MIFGSM, PGD
from lightning_modules.objectives import ClassificationObjective

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
    runs: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device, clock: str
) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per implementation, timed in turn so shared-machine load hits all alike, and each
    implementation's last output. ``clock`` "cpu" counts this process's CPU time (all its threads)."""
    now = CLOCKS[clock]
    outputs = {name: run() for name, run in runs.items() for _ in range(warmup)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronise(device)
            start = now()
            outputs[name] = run()
            synchronise(device)
            seconds[name].append(now() - start)
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
    args = parser.parse_args(argv)
    for name in ("num_classes", "batch", "size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark, print the tables and return {attack: {implementation: median seconds}}, the
    early-stop timings under "{attack} early_stop": {"without": ..., "with": ...}."""
    import timm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
    return results | {f"{name} early_stop": medians for name, medians in speedups.items()}


if __name__ == "__main__":
    main()
