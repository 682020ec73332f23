"""Lung segmentation: image/mask folders (chest X-ray, CT slices) or NIfTI CT volumes with lung masks."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.base import MedicalDataModule
from datamodules.io import find_images, image_size, read_image, read_mask
from datamodules.nifti import AxialVolume, check_window, find_volumes, nifti_stem, window
from datamodules.pipeline import Example
from datamodules.splits import random_split

LAYOUTS = ("folders", "nifti")
# split -> accepted sub-folder names of the split layout, e.g. train/images + train/masks
SPLIT_FOLDERS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}


@dataclass(frozen=True)
class FilePair:
    """An image file and its mask file (binarised at > 127)."""

    image: Path
    mask: Path

    def load(self) -> Example:
        return Example(read_image(self.image), read_mask(self.mask), self.image.stem)


@dataclass(frozen=True)
class VolumeSlice:
    """One axial slice of a CT volume and its lung-mask volume (any non-zero label is lung)."""

    volume: Path
    mask: Path
    index: int
    window: tuple[float, float]

    def load(self) -> Example:
        image = window(AxialVolume(self.volume).axial_slice(self.index), *self.window)[..., None]
        mask = (AxialVolume(self.mask).axial_slice(self.index) != 0).astype("uint8")
        return Example(image, mask, f"{nifti_stem(self.volume)}/{self.index}")


def match_by_name(
    first: dict[str, Path], second: dict[str, Path], kinds: tuple[str, str]
) -> list[tuple[Path, Path]]:
    """Pairs of files sharing a key, in key order; files without a partner are skipped with a warning."""
    for kind, own, other in ((kinds[0], first, second), (kinds[1], second, first)):
        orphans = sorted(own.keys() - other.keys())
        if orphans:
            folder = own[orphans[0]].parent
            warnings.warn(
                f"skipping {len(orphans)} {kind} in {folder} without a partner: {orphans}", stacklevel=3
            )
    return [(first[key], second[key]) for key in sorted(first.keys() & second.keys())]


def pair_folders(image_dir: Path, mask_dir: Path) -> list[FilePair]:
    """Image/mask pairs matched by file stem; orphans are skipped with a warning; sizes must agree."""
    for directory in (image_dir, mask_dir):
        if not directory.is_dir():
            raise FileNotFoundError(f"folder not found: {directory}")
    pairs = [
        FilePair(image, mask)
        for image, mask in match_by_name(
            {path.stem: path for path in find_images(image_dir)},
            {path.stem: path for path in find_images(mask_dir)},
            ("images", "masks"),
        )
    ]
    if not pairs:
        raise ValueError(f"no image/mask pairs in {image_dir} and {mask_dir}")
    for pair in pairs:
        image_wh, mask_wh = image_size(pair.image), image_size(pair.mask)
        if image_wh != mask_wh:
            raise ValueError(f"mask {pair.mask} is {mask_wh} (w, h) but image {pair.image} is {image_wh}")
    return pairs


def pair_volumes(root: Path) -> list[tuple[Path, Path]]:
    """(CT, lung mask) volumes from ``ct_scans/`` and ``lung_mask/``: by ``metadata.csv`` or equal names."""
    scans, masks = root / "ct_scans", root / "lung_mask"
    for directory in (scans, masks):
        if not directory.is_dir():
            raise FileNotFoundError(f"folder not found: {directory}")
    metadata = root / "metadata.csv"
    if metadata.is_file():
        with metadata.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"ct_scan", "lung_mask"} <= set(reader.fieldnames or []):
                raise ValueError(
                    f"{metadata}: expected columns ct_scan, lung_mask; found {reader.fieldnames}"
                )
            pairs = [
                (scans / Path(row["ct_scan"]).name, masks / Path(row["lung_mask"]).name) for row in reader
            ]
    else:
        pairs = match_by_name(
            {path.name: path for path in find_volumes(scans)},
            {path.name: path for path in find_volumes(masks)},
            ("CT volumes", "masks"),
        )
    if not pairs:
        raise ValueError(f"no CT/lung-mask volume pairs under {root}")
    return pairs


class LungSegmentationDataModule(MedicalDataModule):
    """Binary lung masks (0 background, 1 lung) for chest X-rays or CT slices.

    ``layout="folders"``: ``{train,valid,test}/{images,masks}`` (official split) or flat
    ``{images,masks}`` (split by ``seed``). ``layout="nifti"``: ``ct_scans/`` + ``lung_mask/`` volumes,
    HU window [window_low, window_high] -> [0, 1], split by volume so no patient spans two splits.
    """

    task = "segmentation"
    num_classes = 2
    class_names = ["background", "lung"]

    def __init__(
        self,
        root: str,
        layout: str = "folders",
        size: int = 256,
        channels: int = 1,
        window_low: float = -1000.0,
        window_high: float = 400.0,
        slice_stride: int = 1,
        skip_empty: bool = True,
        batch_size: int = 16,
        **options: Any,
    ) -> None:
        super().__init__(size, channels, batch_size=batch_size, **options)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        check_window(window_low, window_high)
        if slice_stride < 1:
            raise ValueError(f"slice_stride must be >= 1, got {slice_stride}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root not found: {self.root}")
        self.layout = layout
        self.window = (window_low, window_high)
        self.slice_stride = slice_stride
        self.skip_empty = skip_empty

    def _split_folder(self, split: str) -> Path:
        for name in SPLIT_FOLDERS[split]:
            if (self.root / name).is_dir():
                return self.root / name
        raise FileNotFoundError(
            f"{self.root}: split folder for {split!r} not found (tried {SPLIT_FOLDERS[split]})"
        )

    def _folder_splits(self) -> dict[str, list[FilePair]]:
        if (self.root / "train").is_dir():
            return {
                split: pair_folders(self._split_folder(split) / "images", self._split_folder(split) / "masks")
                for split in SPLIT_FOLDERS
            }
        pairs = pair_folders(self.root / "images", self.root / "masks")
        indices = random_split(len(pairs), self.val_fraction, self.test_fraction, self.seed)
        return {split: [pairs[i] for i in chosen] for split, chosen in indices.items()}

    def _slices(self, scan: Path, mask: Path) -> list[VolumeSlice]:
        volume, mask_volume = AxialVolume(scan), AxialVolume(mask)
        if volume.shape != mask_volume.shape:
            raise ValueError(f"mask {mask} has shape {mask_volume.shape} but CT {scan} has {volume.shape}")
        indices = mask_volume.occupied_slices() if self.skip_empty else range(len(volume))
        return [VolumeSlice(scan, mask, int(k), self.window) for k in list(indices)[:: self.slice_stride]]

    def _volume_splits(self) -> dict[str, list[VolumeSlice]]:
        pairs = pair_volumes(self.root)
        indices = random_split(len(pairs), self.val_fraction, self.test_fraction, self.seed)
        return {
            split: [item for i in chosen for item in self._slices(*pairs[i])]
            for split, chosen in indices.items()
        }

    def build_splits(self) -> dict[str, list[FilePair] | list[VolumeSlice]]:
        return self._folder_splits() if self.layout == "folders" else self._volume_splits()

    def load_example(self, record: FilePair | VolumeSlice) -> Example:
        return record.load()
