"""Labelled image folders (one sub-folder of images per label), read the same way by eval and finetune.

Images are resized the way Hugging Face image processors do it (PIL, bilinear) to a square
uint8 RGB array at the model's input size: the same form as the face crops of `fervid run`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import FervidError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def scan(root: str | Path, pattern: str | None = None) -> dict[str, list[Path]]:
    """Folder name -> its image files (searched recursively, sorted), keeping names that match pattern."""
    root = Path(root)
    if not root.is_dir():
        raise FervidError(f"image folder not found: {root}")
    folders: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folders[folder.name] = sorted(
            p for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and (pattern is None or fnmatch.fnmatch(p.name, pattern)))
    if not folders:
        raise FervidError(f"{root} has no sub-folders; it needs one folder of images per label")
    if len({name.lower() for name in folders}) < len(folders):
        raise FervidError(f"{root} has folders whose names differ only in case; labels are matched ignoring case")
    if not any(folders.values()):
        which = f" matching '{pattern}'" if pattern else ""
        raise FervidError(f"no images{which} in the label folders of {root} ({', '.join(IMAGE_SUFFIXES)})")
    return folders


@dataclass(frozen=True)
class LabelMatch:
    """Folders paired with model labels by name, case-insensitively, and what is left over on each side."""

    index: dict[str, int]  # folder name -> label index
    extra_folders: list[str]  # folders no label is named after
    missing_labels: list[str]  # labels with no folder

    @property
    def exact(self) -> bool:
        return not self.extra_folders and not self.missing_labels

    def mismatch(self, what: str) -> str:
        """One line naming both sides of a mismatch with the labels of what."""
        parts = []
        if self.extra_folders:
            parts.append(f"folders with no label: {', '.join(self.extra_folders)}")
        if self.missing_labels:
            parts.append(f"labels with no folder: {', '.join(self.missing_labels)}")
        return f"the image folders do not match the labels of {what} ({'; '.join(parts)})"


def match_labels(folders: list[str], labels: list[str]) -> LabelMatch:
    by_name = {label.lower(): i for i, label in enumerate(labels)}
    index = {f: by_name[f.lower()] for f in folders if f.lower() in by_name}
    taken = set(index.values())
    return LabelMatch(index=index, extra_folders=[f for f in folders if f not in index],
                      missing_labels=[label for i, label in enumerate(labels) if i not in taken])


def labelled_files(folders: dict[str, list[Path]], index: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Paths and label indices of every image in the folders that index maps."""
    paths = [str(p) for name in index for p in folders[name]]
    labels = np.array([index[name] for name in index for _ in folders[name]], dtype=np.int64)
    return paths, labels


def load_image(path: str | Path, side: int) -> np.ndarray:
    """(side, side, 3) uint8 RGB, resized like a Hugging Face image processor (PIL bilinear)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (side, side):
        rgb = rgb.resize((side, side), Image.BILINEAR)
    return np.array(rgb, dtype=np.uint8)
