"""CT volumes in NIfTI: HU windowing and axial slices read one at a time, in radiological orientation.
A truncated or damaged file, or one with NaN/Inf voxels, is an error naming the file (and slice)."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)  # nibabel's and gzip's for short or damaged data


def check_window(low: float, high: float) -> None:
    """Raise ValueError unless the HU window is non-empty."""
    if not high > low:
        raise ValueError(f"window_high ({high}) must exceed window_low ({low})")


def window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Hounsfield units mapped linearly from [low, high] to [0, 1] (float32), clipped outside."""
    return np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0)


def nifti_stem(path: Path) -> str:
    """The file name without ``.nii`` or ``.nii.gz``."""
    name = path.name
    return name[: -len(".gz")][: -len(".nii")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def find_volumes(directory: Path) -> list[Path]:
    """NIfTI files directly inside ``directory``, sorted by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


class AxialVolume:
    """A NIfTI volume read slice by slice along its superior-inferior axis.

    Slices come out as (rows, columns) with anterior at the top and the patient's right on the left.
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"NIfTI file not found: {path}")
        try:
            self.image = nib.load(path)
        except Exception as error:  # nibabel raises several unrelated types for a bad header
            raise ValueError(f"cannot read NIfTI file {path}: {error}") from error
        shape = self.image.shape
        if len(shape) < 3 or any(extent != 1 for extent in shape[3:]):
            raise ValueError(f"NIfTI file {path} is not a 3D volume: shape {shape}")
        self.path = path
        check_length(path, self.image)
        orientation = nib.io_orientation(self.image.affine)
        array_axis = {int(orientation[axis, 0]): axis for axis in range(3)}
        self._axial, self._ap, self._lr = array_axis[2], array_axis[1], array_axis[0]
        self._flip_rows = orientation[self._ap, 1] > 0
        self._flip_columns = orientation[self._lr, 1] > 0
        self.shape = tuple(shape[:3])

    def __len__(self) -> int:
        return self.shape[self._axial]

    def _orient(self, plane: np.ndarray) -> np.ndarray:
        remaining = [axis for axis in range(3) if axis != self._axial]
        if remaining[0] != self._ap:
            plane = plane.T
        if self._flip_rows:
            plane = plane[::-1]
        if self._flip_columns:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane)

    def _read(self, key: tuple[slice | int, ...] | slice, where: str) -> np.ndarray:
        """Voxels ``key`` as float32; ValueError naming the file and ``where`` if they cannot be read or are
        not all finite."""
        try:
            data = np.asarray(self.image.dataobj[key], dtype=np.float32)
        except READ_ERRORS as error:
            raise ValueError(f"cannot read {where} of NIfTI file {self.path} (truncated or damaged?): "
                             f"{error}") from error
        if not np.isfinite(data).all():
            raise ValueError(f"NIfTI file {self.path}: {where} has NaN or infinite voxels")
        return data

    def axial_slice(self, index: int) -> np.ndarray:
        """Slice ``index`` (scaled values, float) oriented for display."""
        key = [slice(None)] * 3 + [0] * (len(self.image.shape) - 3)
        key[self._axial] = index
        return self._orient(self._read(tuple(key), f"slice {index}"))

    def occupied_slices(self) -> np.ndarray:
        """Indices of axial slices with any non-zero voxel (reads the whole volume)."""
        data = self._read(slice(None), "the volume").reshape(self.shape)
        other_axes = tuple(axis for axis in range(3) if axis != self._axial)
        return np.flatnonzero((data != 0).any(axis=other_axes))


def check_length(path: Path, image: nib.Nifti1Image) -> None:
    """ValueError naming ``path`` when an uncompressed file is shorter than its header's voxels need (a
    compressed one shows truncation only when read)."""
    header = image.header
    if path.name.endswith(".gz") or not hasattr(header, "get_data_offset"):
        return
    needed = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    size = path.stat().st_size
    if size < needed:
        raise ValueError(f"NIfTI file {path} is truncated: {size} bytes, its header needs {needed}")
