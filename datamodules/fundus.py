"""Diabetic-retinopathy grading from fundus photographs: APTOS-2019 and EyePACS (Kaggle DR) layouts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from datamodules.base import MedicalDataModule
from datamodules.io import read_image
from datamodules.pipeline import Example
from datamodules.splits import stratified_split

DR_GRADES = ["no DR", "mild", "moderate", "severe", "proliferative DR"]
# layout name -> (id column, grade column, image file suffix)
CSV_LAYOUTS = {
    "aptos": ("id_code", "diagnosis", ".png"),
    "eyepacs": ("image", "level", ".jpeg"),
}


def detect_layout(path: Path, header: list[str]) -> str:
    """The layout whose id and grade columns both appear in ``header``."""
    for layout, (id_column, grade_column, _) in CSV_LAYOUTS.items():
        if id_column in header and grade_column in header:
            return layout
    expected = " or ".join(f"({i}, {g})" for i, g, _ in CSV_LAYOUTS.values())
    raise ValueError(f"{path}: expected columns {expected}; found {header}")


def read_grades(path: Path) -> tuple[str, list[tuple[str, int]]]:
    """The layout and the (image id, grade) rows of a grading CSV; grades must be 0..4."""
    if not path.is_file():
        raise FileNotFoundError(f"grading CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        layout = detect_layout(path, [name.strip() for name in reader.fieldnames or []])
        id_column, grade_column, _ = CSV_LAYOUTS[layout]
        rows = []
        for line, row in enumerate(reader, start=2):
            row = {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
            grade = row[grade_column]
            if not grade.isdigit() or int(grade) >= len(DR_GRADES):
                raise ValueError(f"{path}, line {line}: grade {grade!r} is not an integer in 0..4")
            rows.append((row[id_column], int(grade)))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return layout, rows


class FundusDRDataModule(MedicalDataModule):
    """DR grades 0-4 from a CSV (``id_code,diagnosis`` APTOS or ``image,level`` EyePACS) and an image folder.

    The layout is detected from the CSV header; the split is stratified by grade and fixed by ``seed``.
    """

    task = "classification"
    num_classes = len(DR_GRADES)
    class_names = DR_GRADES

    def __init__(
        self,
        root: str,
        csv: str = "train.csv",
        image_dir: str = "train_images",
        size: int = 224,
        channels: int = 3,
        batch_size: int = 32,
        **options: Any,
    ) -> None:
        super().__init__(size, channels, batch_size=batch_size, **options)
        self.csv_path = Path(root) / csv
        self.image_dir = Path(root) / image_dir
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image_dir not found: {self.image_dir}")

    def build_splits(self) -> dict[str, list[tuple[Path, int]]]:
        layout, rows = read_grades(self.csv_path)
        suffix = CSV_LAYOUTS[layout][2]
        records = [(self.image_dir / f"{image_id}{suffix}", grade) for image_id, grade in rows]
        missing = [path for path, _ in records if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) listed in {self.csv_path} are missing, first: {missing[0]}"
            )
        indices = stratified_split(
            [grade for _, grade in records], self.val_fraction, self.test_fraction, self.seed
        )
        return {split: [records[i] for i in chosen] for split, chosen in indices.items()}

    def load_example(self, record: tuple[Path, int]) -> Example:
        path, grade = record
        return Example(read_image(path), grade, path.stem)
