"""Datamodules over the procedural phantoms: reproducible, offline, with exact labels."""

from __future__ import annotations

from typing import Any

import numpy as np

from datamodules.base import MedicalDataModule, check_positive
from datamodules.endoscopy import EAD_CLASSES
from datamodules.fundus import DR_GRADES
from datamodules.lung import LungSegmentationDataModule
from datamodules.nifti import check_window, window
from datamodules.phantoms.endoscopy import render_endoscopy
from datamodules.phantoms.fundus import render_fundus
from datamodules.phantoms.lung_ct import render_lung_ct
from datamodules.pipeline import Boxes, Example
from datamodules.splits import stratified_split


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: depends on (seed, index) only, so generation order is free."""
    return np.random.default_rng([seed, index])


REFERABLE_GRADE = 2  # moderate DR or worse: the usual two-class (referable) DR screening task
REFERABLE_CLASSES = ("non-referable", "referable")

class SyntheticDataModule(MedicalDataModule):
    """Base of the phantom datamodules: renders ``num_samples`` examples once, at setup.

    Splits are stratified by class for classification and random otherwise, fixed by ``seed``.
    """

    def __init__(self, num_samples: int, size: int, channels: int, **options: Any) -> None:
        super().__init__(size, channels, **options)
        check_positive("num_samples", num_samples)
        self.num_samples = num_samples

    def render(self, index: int, rng: np.random.Generator) -> Example:
        """Sample ``index`` drawn from its own ``rng``."""
        raise NotImplementedError

    def build_splits(self) -> dict[str, list[Example]]:
        examples = [self.render(index, sample_rng(self.seed, index)) for index in range(self.num_samples)]
        strata = [example.target if isinstance(example.target, int) else 0 for example in examples]
        indices = stratified_split(strata, self.val_fraction, self.test_fraction, self.seed)
        return {split: [examples[i] for i in chosen] for split, chosen in indices.items()}

    def load_example(self, record: Example) -> Example:
        return record


class SyntheticFundusDataModule(SyntheticDataModule):
    """Synthetic fundus photographs graded 0-4 by their lesions (grade = index mod 5, so balanced).
    ``referable=True`` labels them two-class instead: referable DR (grade >= 2) or not."""

    task = "classification"
    num_classes = len(DR_GRADES)
    class_names = DR_GRADES

    def __init__(
        self,
        num_samples: int = 1000,
        size: int = 64,
        channels: int = 3,
        batch_size: int = 32,
        referable: bool = False,
        **options: Any,
    ) -> None:
        self.referable = referable
        if referable:
            self.num_classes, self.class_names = len(REFERABLE_CLASSES), REFERABLE_CLASSES
        super().__init__(num_samples, size, channels, batch_size=batch_size, **options)

    def render(self, index: int, rng: np.random.Generator) -> Example:
        grade = index % len(DR_GRADES)
        phantom = render_fundus(grade, self.image_size, rng)
        label = int(grade >= REFERABLE_GRADE) if self.referable else grade
        return Example(phantom.image, label, f"synthetic-fundus/{self.seed}/{index}")


class SyntheticLungCTDataModule(SyntheticDataModule):
    """Synthetic axial chest CT slices (HU phantom, windowed to [0, 1]) with lung masks."""

    task = "segmentation"
    num_classes = LungSegmentationDataModule.num_classes
    class_names = LungSegmentationDataModule.class_names

    def __init__(
        self,
        num_samples: int = 200,
        size: int = 64,
        channels: int = 1,
        window_low: float = -1000.0,
        window_high: float = 400.0,
        batch_size: int = 16,
        **options: Any,
    ) -> None:
        super().__init__(num_samples, size, channels, batch_size=batch_size, **options)
        check_window(window_low, window_high)
        self.window = (window_low, window_high)

    def render(self, index: int, rng: np.random.Generator) -> Example:
        phantom = render_lung_ct(self.image_size, rng)
        image = window(phantom.hu, *self.window)[..., None]
        return Example(image, phantom.lungs, f"synthetic-lung-ct/{self.seed}/{index}")


class SyntheticEndoscopyDataModule(SyntheticDataModule):
    """Synthetic endoscopy frames with EAD2019 artefact boxes (labels 1..7 = ``class_names``)."""

    task = "detection"
    num_classes = len(EAD_CLASSES)
    class_names = EAD_CLASSES

    def __init__(
        self,
        num_samples: int = 200,
        size: int = 128,
        channels: int = 3,
        max_objects: int = 3,
        batch_size: int = 8,
        **options: Any,
    ) -> None:
        super().__init__(num_samples, size, channels, batch_size=batch_size, **options)
        check_positive("max_objects", max_objects)
        self.max_objects = max_objects

    def render(self, index: int, rng: np.random.Generator) -> Example:
        phantom = render_endoscopy(self.image_size, rng, self.max_objects)
        return Example(
            phantom.image, Boxes(phantom.boxes, phantom.labels), f"synthetic-endoscopy/{self.seed}/{index}"
        )
