"""The evaluation's speed options: chunked attacks (fixed and autoscaled batch sizes), mixed precision,
channels_last and torch.compile inside ``trainer.test``, each leaving results and models as without them.
Tests marked ``gpu`` run on CUDA only (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import functools
import pickle
import warnings
from collections.abc import Callable

import lightning as L
import pytest
import torch
from torch import Tensor, nn

import callbacks.speed
from attacks.apgd import APGD
from attacks.autoattack import AutoAttack
from attacks.base import Attack, AttackResult, SampleRandom, TraceRecorder
from attacks.compiled import CompiledObjective
from attacks.gradient import FGSM, PGD
from attacks.square import SquareAttack
from callbacks.attack_eval import AdversarialEvaluation
from callbacks.batch_size import AttackBatchSizes, attack_in_chunks, fits_without_oom, largest_fitting
from callbacks.model_state import ModuleState
from callbacks.transfer import TransferEvaluation
from datamodules import SyntheticFundusDataModule
from lightning_modules.objectives import ClassificationObjective
from tests.attacks.toys import blob_images, small_cnn
from tests.callbacks.test_model_restore import assert_unchanged, half_frozen_classifier, snapshot

EPS = 8 / 255
SECONDS = "seconds"  # timing metrics differ between runs by nature


def run_test(callback: L.Callback, module: nn.Module | None = None, batches: int = 1, accelerator: str = "cpu") -> None:
    """``trainer.test`` of a half-frozen resnet18 (or ``module``) on 32-pixel fundus batches of 8 images."""
    module = half_frozen_classifier(0) if module is None else module
    datamodule = SyntheticFundusDataModule(num_samples=80, size=32, seed=0, batch_size=8)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=batches,
        callbacks=[callback],
    )
    trainer.test(module, datamodule=datamodule, verbose=False)


def run_evaluation(
    callback: AdversarialEvaluation, module: nn.Module | None = None, batches: int = 1, accelerator: str = "cpu"
) -> dict[str, float]:
    run_test(callback, module, batches, accelerator)
    return callback.results


def pgd_evaluation(**options) -> AdversarialEvaluation:
    return AdversarialEvaluation(
        {"pgd": lambda eps: PGD(eps=eps, steps=3, random_start=True)}, [EPS], brisque=False, **options
    )


def assert_same_results(results: dict[str, float], reference: dict[str, float], tolerance: float = 1e-6) -> None:
    assert results.keys() == reference.keys()
    for key, value in reference.items():
        if SECONDS not in key:
            assert results[key] == pytest.approx(value, abs=tolerance, nan_ok=True), key


def oom_above(threshold: int, tried: list[int]) -> Callable[[int], object]:
    """A run that fails as CUDA does, with an out-of-memory error, above ``threshold`` samples."""

    def run(size: int) -> None:
        tried.append(size)
        if size > threshold:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {size} samples")

    return run


def fake_probe(threshold: int, tried: list[int]):
    """An ``AttackBatchSizes`` probe whose trials record their sizes and run out of memory above ``threshold``."""
    return lambda attack, objective, images, target, ids: fits_without_oom(oom_above(threshold, tried))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("precision", "fp8"),
        ("channels_last", "yes"),
        ("compile", 1),
        ("attack_batch_size", 0),
        ("attack_batch_size", "max"),
        ("attack_batch_size", True),
        ("attack_batch_size", 2.5),
    ],
)
def test_bad_options_are_refused_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=f"{name} must .*got {value!r}"):
        pgd_evaluation(**{name: value})


def test_the_search_finds_the_largest_batch_below_a_fake_oom():
    tried: list[int] = []
    assert largest_fitting(fits_without_oom(oom_above(40, tried)), 64) == 40
    assert tried == [64, 32, 48, 40, 44, 42, 41]  # the limit, then a binary search
    tried.clear()
    assert largest_fitting(fits_without_oom(oom_above(40, tried)), 40) == 40 and tried == [40]
    with pytest.raises(RuntimeError, match="single sample"):
        largest_fitting(fits_without_oom(oom_above(0, [])), 8)


def test_only_out_of_memory_errors_count_as_not_fitting():
    def broken(size: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        fits_without_oom(broken)(4)


def test_found_sizes_are_cached_per_model_attack_and_image_shape():
    tried: list[int] = []
    sizes = AttackBatchSizes(probe=fake_probe(40, tried), devices=("cpu",))
    objective = ClassificationObjective(small_cnn(4, dense=False))
    images, labels = torch.rand(64, 3, 16, 16), torch.zeros(64, dtype=torch.long)
    pgd = PGD(eps=EPS)
    assert sizes.size(pgd, objective, images, labels, None) == 40 and len(tried) == 7
    assert sizes.size(pgd, objective, images[:50], labels[:50], None) == 40 and len(tried) == 7  # cached
    assert sizes.size(PGD(eps=2 * EPS), objective, images, labels, None) == 40 and len(tried) == 14
    assert sizes.size(pgd, objective, images[..., :8], labels, None) == 40 and len(tried) == 21
    other_model = ClassificationObjective(small_cnn(4, dense=False))
    assert sizes.size(pgd, other_model, images, labels, None) == 40 and len(tried) == 28
    on_cpu = AttackBatchSizes(probe=fake_probe(40, tried))  # default devices: CUDA only
    assert on_cpu.size(pgd, objective, images, labels, None) == 64 and len(tried) == 28
    copied = pickle.loads(pickle.dumps(AttackBatchSizes(devices=("cpu",))))  # as DDP-spawned processes get it
    assert copied.devices == ("cpu",) and len(copied.found) == 0


def linear_batch(count: int) -> tuple[ClassificationObjective, Tensor, Tensor, list[str]]:
    """An untrained linear classifier (fooled within a few grey levels, at different steps per sample), blob
    images and its own predictions as labels (every sample starts correct)."""
    torch.manual_seed(0)
    objective = ClassificationObjective(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval())
    images, _, _ = blob_images(count, torch.Generator().manual_seed(9))
    with torch.no_grad():
        labels = objective.predict(objective.forward(images))
    return objective, images, labels, [f"blob-{i}" for i in range(count)]


@pytest.mark.parametrize(
    "attack",
    [
        PGD(eps=2 / 255, steps=10, random_start=True, early_stop=True),
        APGD(eps=2 / 255, steps=5, n_restarts=2),
        SquareAttack(eps=2 / 255, max_queries=30),
        AutoAttack(eps=1.5 / 255, steps=5),  # breaks the samples at stages 1 and 2
    ],
    ids=lambda attack: attack.name,
)
def test_chunks_give_the_result_of_the_whole_batch_given_sample_ids(attack: Attack):
    # no chunk of one sample: a matrix-vector product rounds unlike a matrix product, which can change
    # APGD's step-size decisions (not its result) on this linear model
    objective, images, labels, ids = linear_batch(12)
    whole = attack(objective, images, labels, ids=ids)
    chunked = attack_in_chunks(attack, objective, images, labels, ids, size=4)
    torch.testing.assert_close(chunked.adv_images, whole.adv_images, rtol=0, atol=1e-6)
    for name, value in whole.trace.__dict__.items():
        torch.testing.assert_close(getattr(chunked.trace, name), value, equal_nan=True, msg=name)
    assert chunked.extras.keys() == whole.extras.keys()
    for name, value in whole.extras.items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(chunked.extras[name], value, msg=name)
        else:
            assert chunked.extras[name] == value, name


def test_early_stopping_chunks_have_traces_of_different_lengths():
    """PGD with early stop ends a chunk when all its samples are fooled, so its chunks above have traces of
    different lengths, which their concatenation pads as the whole batch records a stopped sample."""
    objective, images, labels, ids = linear_batch(12)
    attack = PGD(eps=2 / 255, steps=10, random_start=True, early_stop=True)
    lengths = {
        attack(objective, images[i : i + 4], labels[i : i + 4], ids=ids[i : i + 4]).trace.losses.shape[1]
        for i in range(0, 12, 4)
    }
    assert len(lengths) > 1, "the chunks should stop at different steps for this test to mean something"


def test_chunked_evaluation_gives_the_metrics_of_whole_batches():
    reference = run_evaluation(pgd_evaluation(), batches=2)
    assert_same_results(run_evaluation(pgd_evaluation(attack_batch_size=3), batches=2), reference)


def test_auto_batch_size_searches_on_the_first_batch_only_and_chunks_alike():
    tried: list[int] = []
    callback = pgd_evaluation(attack_batch_size=AttackBatchSizes(probe=fake_probe(5, tried), devices=("cpu",)))
    module = half_frozen_classifier(0)
    results = run_evaluation(callback, module, batches=2)
    assert tried == [8, 4, 6, 5]  # the first batch of 8; the second is chunked with the size found
    assert list(callback.attack_batch_size.found[module].values()) == [5]
    assert callback.evaluation_settings()["attack_batch_size"] == "auto"
    assert_same_results(results, run_evaluation(pgd_evaluation(), batches=2))


class FormatSpy(PGD):
    """PGD that records the memory format of the images and the first convolution it is given."""

    seen: list[tuple[bool, bool]] = []

    def run(self, objective, images: Tensor, target, random: SampleRandom) -> AttackResult:
        weight = objective.model.backbone.conv1.weight
        channels_last = torch.channels_last
        self.seen.append(
            (
                images.is_contiguous(memory_format=channels_last),
                weight.is_contiguous(memory_format=channels_last) and not weight.is_contiguous(),
            )
        )
        return super().run(objective, images, target, random)


def test_channels_last_converts_model_and_images_and_hands_the_module_back():
    FormatSpy.seen = []
    callback = AdversarialEvaluation(
        {"pgd": lambda eps: FormatSpy(eps=eps, steps=3, random_start=True)}, [EPS], brisque=False, channels_last=True
    )
    module = half_frozen_classifier(0)
    before, formats = snapshot(module), ModuleState.of(module).formats
    results = run_evaluation(callback, module)
    assert FormatSpy.seen == [(True, True)]
    assert callback.evaluation_settings()["channels_last"] is True
    assert_unchanged(module, before)
    assert ModuleState.of(module).formats == formats
    assert module.backbone.conv1.weight.is_contiguous()
    assert_same_results(results, run_evaluation(pgd_evaluation()), tolerance=1e-4)


def test_channels_last_is_off_by_default_on_cpu_and_a_channels_last_model_stays_so():
    module = half_frozen_classifier(0).to(memory_format=torch.channels_last)
    callback = pgd_evaluation()
    run_evaluation(callback, module)
    assert callback.evaluation_settings()["channels_last"] is False
    weight = module.backbone.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_module_state_restores_either_memory_format():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    layouts = (torch.contiguous_format, torch.channels_last)
    for layout, other in (layouts, layouts[::-1]):
        model.to(memory_format=layout)
        state = ModuleState.of(model)
        model.to(memory_format=other)
        state.restore(model)
        assert model[0].weight.is_contiguous(memory_format=layout)
        assert ModuleState.of(model).formats == state.formats


@pytest.mark.slow
def test_mixed_precision_evaluation_keeps_the_budget_and_records_its_settings():
    callback = pgd_evaluation(precision="bf16-mixed")
    results = run_evaluation(callback)
    assert callback.evaluation_settings() == {
        "precision": "bf16-mixed",
        "channels_last": False,
        "compile": False,
        "attack_batch_size": None,
        "robust_accuracy_only": False,
    }
    assert results["adv/pgd/8_255/linf"] == pytest.approx(EPS, abs=1e-6)
    reference = run_evaluation(pgd_evaluation())
    assert results["clean/accuracy"] == pytest.approx(reference["clean/accuracy"], abs=1 / 8 + 1e-6)


def test_transfer_evaluation_in_bf16_matches_fp32_and_hands_the_sources_back():
    matrices = {}
    for precision in ("32", "bf16-mixed"):
        source = half_frozen_classifier(1)
        before = snapshot(source)
        fgsm = {"fgsm": lambda eps: FGSM(eps=eps)}
        callback = TransferEvaluation(fgsm, {"source": source}, [EPS], precision=precision)
        run_test(callback)
        assert_unchanged(source, before)
        matrices[precision] = callback.matrix["fgsm/8_255"]
    for source, row in matrices["32"].items():
        for target, rate in row.items():
            assert matrices["bf16-mixed"][source][target] == pytest.approx(rate, abs=1 / 8 + 1e-6), (source, target)


def failing_backend(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> None:
    raise RuntimeError("no compiler here")


def test_compile_option_compiles_the_forward_and_falls_back_with_one_warning(monkeypatch):
    """The callback builds one CompiledObjective per evaluation; a backend that fails leaves the results of
    an eager evaluation and one warning (torch.compile itself is checked in tests/attacks/test_compiled.py)."""
    monkeypatch.setattr(
        callbacks.speed, "CompiledObjective", functools.partial(CompiledObjective, backend=failing_backend)
    )
    callback = pgd_evaluation(compile=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_evaluation(callback)
    assert sum("torch.compile failed" in str(warning.message) for warning in caught) == 1
    assert "no compiler here" in callback.objective.failure
    assert_same_results(results, run_evaluation(pgd_evaluation()))


class MemoryHog(Attack):
    """Leaves the images unchanged after holding ``per_sample`` bytes of GPU memory per sample."""

    name = "memory_hog"

    def __init__(self, per_sample: int = 1, seed: int = 0) -> None:
        super().__init__(seed)
        self.per_sample = int(per_sample)
        self.runs = 0

    def run(self, objective, images: Tensor, target, random: SampleRandom) -> AttackResult:
        self.runs += 1
        hold = torch.empty(len(images) * self.per_sample, dtype=torch.uint8, device=images.device)
        del hold
        recorder = TraceRecorder(images)
        return AttackResult(images.clone(), recorder.finish(torch.zeros_like(images)))


@pytest.mark.gpu
def test_cuda_oom_search_finds_what_fits_and_asks_once():
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    attack = MemoryHog(per_sample=free // 40)
    objective = ClassificationObjective(small_cnn(4, dense=False).to(device))
    images, labels = torch.rand(64, 3, 16, 16, device=device), torch.zeros(64, dtype=torch.long, device=device)
    sizes = AttackBatchSizes()
    found = sizes.size(attack, objective, images, labels, None)
    assert 30 <= found <= 40, found
    runs = attack.runs
    assert sizes.size(attack, objective, images, labels, None) == found and attack.runs == runs
    result = attack_in_chunks(attack, objective, images, labels, None, found)
    assert torch.equal(result.adv_images, images)


@pytest.mark.gpu
def test_cuda_evaluation_with_every_speed_option_matches_fp32_and_hands_the_module_back():
    module = half_frozen_classifier(0)
    before = snapshot(module)
    fast = pgd_evaluation(precision="bf16-mixed", compile=True, attack_batch_size="auto")
    results = run_evaluation(fast, module, batches=2, accelerator="gpu")
    assert fast.evaluation_settings() == {
        "precision": "bf16-mixed",
        "channels_last": True,
        "compile": True,
        "attack_batch_size": "auto",
    }
    assert fast.objective.objective.failure is None
    assert_unchanged(module.cpu(), before)
    assert module.backbone.conv1.weight.is_contiguous()
    reference = run_evaluation(pgd_evaluation(), batches=2, accelerator="gpu")
    assert results["adv/pgd/8_255/linf"] == pytest.approx(EPS, abs=1e-6)
    for key in ("clean/accuracy", "adv/pgd/8_255/accuracy"):
        assert results[key] == pytest.approx(reference[key], abs=2 / 16 + 1e-6), key
