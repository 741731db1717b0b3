"""EgoGesture (Zhang et al., IEEE TMM 2018): RGB and depth frame folders plus the label CSVs.

Layout of the release (frames extracted at 320×240; the download comes in ``images_320-240_*`` parts)::

    <path>/images_320-240/Subject01/Scene1/Color/rgb1/000001.jpg     RGB frames of group 1
                          Subject01/Scene1/Depth/depth1/000001.jpg   depth frames (grey JPEG)
    <path>/labels-final-revised1/subject01/Scene1/Group1.csv

The frames may also sit directly under ``<path>`` or under ``<path>/images``; several
``images*`` folders are searched (one subject each). Folder and file names are matched case-
insensitively (``Subject01``/``subject01``, ``Group1.csv``/``group1.csv`` both occur). Each label CSV
has no header and one row per gesture, ``label,start,end``: the class 1..83 and the first and last
frame (1-based, inclusive) of the gesture in that group's frame folders. Rows that are entirely empty
are ignored; any other malformed row is an error naming the file and line (or, with
``bad_rows="skip"``, a warning). 50 subjects, 6 scenes, 83 classes, 24,161 gestures in 2,081 videos.

Split (the EgoGesture paper's, by subject): test ``2, 9, 11, 14, 18, 19, 28, 31, 41, 47``, val
``1, 7, 12, 13, 24, 29, 33, 34, 35, 37``, train the other 30.

Each gesture becomes a clip of ``frames`` frames sampled uniformly over ``[start, end]`` (rounded
``linspace``), decoded with Pillow (JPEG draft mode, then bilinear resize to ``size``):
``rgb`` ``(N, 3, T, H, W)`` and ``depth`` ``(N, 1, T, H, W)`` uint8, labels ``(N,)`` = class - 1.
Decoded clips are cached under ``root/egogesture/`` as memory-mapped ``.npy`` files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.errors import DataError
from ...core.fileio import sha256 as sha256_file
from ...core.fileio import write_json_sorted
from ...core.progress import bar as progress_bar
from .base import RawDataset, RawSplit, register_dataset
from .prepared import load_or_publish, write_manifest

TEST_SUBJECTS = (2, 9, 11, 14, 18, 19, 28, 31, 41, 47)
VAL_SUBJECTS = (1, 7, 12, 13, 24, 29, 33, 34, 35, 37)
TRAIN_SUBJECTS = tuple(s for s in range(1, 51) if s not in TEST_SUBJECTS + VAL_SUBJECTS)
NUM_CLASSES = 83
LABEL_DIR = "labels-final-revised1"
SUBJECT = re.compile(r"^subject(\d+)$", re.IGNORECASE)
SCENE = re.compile(r"^scene(\d+)$", re.IGNORECASE)
GROUP = re.compile(r"^group(\d+)\.csv$", re.IGNORECASE)
CACHE_VERSION = 1


@dataclass(frozen=True)
class Clip:
    """One labelled gesture: ``label`` is 0-based; ``start``/``end`` are 1-based inclusive frames."""

    subject: int
    scene: int
    group: int
    label: int
    start: int
    end: int
    rgb_dir: Path
    depth_dir: Path
    csv: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.csv}, line {self.line}"

    @property
    def key(self) -> str:
        return f"S{self.subject:02d}/Scene{self.scene}/Group{self.group}/{self.start}-{self.end}"


def _child(folder: Path, name: str) -> Path:
    """``folder/name``, matching an existing child case-insensitively."""
    exact = folder / name
    if exact.exists() or not folder.is_dir():
        return exact
    for child in folder.iterdir():
        if child.name.lower() == name.lower():
            return child
    return exact


def _numbered(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for child in sorted(folder.iterdir()):
        m = pattern.match(child.name)
        if m:
            num = int(m.group(1))
            if num in out:
                raise DataError(f"{child}: duplicates {out[num]}")
            out[num] = child
    return out


def find_subject_dirs(path: Path) -> dict[int, Path]:
    """``subject -> SubjectNN`` frame folder under ``path``, ``path/images*``."""
    candidates = [path, *sorted(p for p in path.glob("images*") if p.is_dir())]
    found: dict[int, Path] = {}
    for folder in candidates:
        for num, sub in _numbered(folder, SUBJECT).items():
            if num in found:
                raise DataError(f"{sub}: subject {num} also at {found[num]}")
            found[num] = sub
    if not found:
        raise DataError(
            f"{path}: no SubjectNN frame folders in it or in its images*/ folders; expected "
            f"images_320-240/Subject01/Scene1/Color/rgb1/000001.jpg"
        )
    return found


def read_label_file(path: Path, bad_rows: str = "error") -> list[tuple[int, int, int, int]]:
    """Rows ``(label 1..83, start, end, line)`` of one ``GroupN.csv`` (no header)."""
    rows, bad = [], []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            fields = [c.strip() for c in row]
            while fields and not fields[-1]:
                fields.pop()
            if not fields:
                continue
            problem = None
            if len(fields) != 3 or not all(c.isdigit() for c in fields):
                problem = f"expected 'label,start,end' (three positive integers), got {','.join(row)!r}"
            else:
                label, start, end = (int(c) for c in fields)
                if not 1 <= label <= NUM_CLASSES:
                    problem = f"label {label} outside 1..{NUM_CLASSES}"
                elif not 1 <= start <= end:
                    problem = f"frames {start}..{end}: need 1 <= start <= end"
            if problem is None:
                rows.append((label, start, end, line))
            elif bad_rows == "error":
                raise DataError(f"{path}, line {line}: {problem}; bad_rows='skip' leaves such rows out")
            else:
                bad.append(f"line {line}: {problem}")
    if bad:
        warnings.warn(f"{path}: {len(bad)} bad label row(s) skipped ({'; '.join(bad[:3])})", stacklevel=3)
    return rows


def list_clips(path: Path, labels: Path, bad_rows: str = "error") -> list[Clip]:
    """Every labelled gesture of the label tree, with its RGB and depth frame folders."""
    if not labels.is_dir():
        raise DataError(f"{labels}: label folder not found; expected {LABEL_DIR}/subject01/Scene1/Group1.csv")
    frame_dirs = find_subject_dirs(path)
    clips = []
    for subject, sub_labels in _numbered(labels, SUBJECT).items():
        for scene, scene_labels in _numbered(sub_labels, SCENE).items():
            for group, csv_path in _numbered(scene_labels, GROUP).items():
                if subject not in frame_dirs:
                    raise DataError(f"{csv_path}: no frame folder for subject {subject} under {path}")
                scene_dir = _child(frame_dirs[subject], f"Scene{scene}")
                rgb_dir = _child(_child(scene_dir, "Color"), f"rgb{group}")
                depth_dir = _child(_child(scene_dir, "Depth"), f"depth{group}")
                for folder in (rgb_dir, depth_dir):
                    if not folder.is_dir():
                        raise DataError(f"{csv_path}: frame folder {folder} not found")
                for label, start, end, line in read_label_file(csv_path, bad_rows):
                    clips.append(
                        Clip(subject, scene, group, label - 1, start, end, rgb_dir, depth_dir, csv_path, line)
                    )
    if not clips:
        raise DataError(f"{labels}: no label rows found in subjectNN/SceneN/GroupN.csv files")
    return clips


def frame_indices(start: int, end: int, frames: int) -> np.ndarray:
    """``frames`` frame numbers spread evenly over ``[start, end]`` (inclusive, rounded)."""
    return np.rint(np.linspace(start, end, frames)).astype(int)


def frame_paths(clip: Clip, frames: int) -> list[tuple[Path, Path]]:
    return [
        (clip.rgb_dir / f"{i:06d}.jpg", clip.depth_dir / f"{i:06d}.jpg")
        for i in frame_indices(clip.start, clip.end, frames)
    ]


def load_frame(path: Path, mode: str, size: Sequence[int]) -> np.ndarray:
    """Decode one frame as ``(H, W, 3)`` (``mode="RGB"``) or ``(H, W)`` (``"L"``) uint8 of ``size``."""
    from PIL import Image, UnidentifiedImageError

    h, w = size
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(mode, (w, h))  # decode at a reduced DCT scale, still >= (w, h)
            im = im.convert(mode)
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: frame not found") from None
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot be decoded as an image ({err})") from err


def load_clip(clip: Clip, frames: int, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(3, T, H, W)`` RGB and ``(1, T, H, W)`` depth uint8 of one gesture."""
    rgb, depth = [], []
    for rgb_path, depth_path in frame_paths(clip, frames):
        rgb.append(load_frame(rgb_path, "RGB", size))
        depth.append(load_frame(depth_path, "L", size))
    return np.stack(rgb).transpose(3, 0, 1, 2), np.stack(depth)[None]


def _missing_frames(clips: list[Clip], frames: int, on_missing: str) -> list[Clip]:
    """Clips whose sampled frames all exist; the others raise or are skipped with a warning."""
    keep, missing = [], []
    for clip in clips:
        absent = [p for pair in frame_paths(clip, frames) for p in pair if not p.is_file()]
        if not absent:
            keep.append(clip)
            continue
        msg = f"{absent[0]}: frame not found (clip {clip.where}, frames {clip.start}-{clip.end})"
        if on_missing == "error":
            raise DataError(msg + "; pass on_missing='skip' to leave such clips out")
        missing.append(msg)
    if missing:
        warnings.warn(
            f"{len(missing)} EgoGesture clip(s) with missing frames skipped: {missing[:3]}", stacklevel=3
        )
    return keep


def _cache_key(path: Path, labels: Path, clips: list[Clip], **options) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    h.update(f"{path.resolve()}|{labels.resolve()}".encode())
    for csv_file in sorted({c.csv for c in clips}):
        st = csv_file.stat()
        h.update(f"{csv_file}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(json.dumps([c.key for c in clips]).encode())
    return h.hexdigest()[:16]


def _write_clips(
    staging: Path,
    members: dict[str, list[Clip]],
    frames: int,
    size: Sequence[int],
    workers: int,
    progress: bool,
) -> None:
    """Decode every clip once into ``staging/<split>_{rgb,depth}.npy`` (+ labels, clip keys, manifest)."""
    bar = None
    if progress:
        bar = progress_bar(total=sum(map(len, members.values())), desc="decode EgoGesture clips")
    files = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split, clips in members.items():
            h, w = size
            rgb = np.lib.format.open_memmap(
                staging / f"{split}_rgb.npy", mode="w+", dtype=np.uint8, shape=(len(clips), 3, frames, h, w)
            )
            depth = np.lib.format.open_memmap(
                staging / f"{split}_depth.npy", mode="w+", dtype=np.uint8, shape=(len(clips), 1, frames, h, w)
            )
            for i, (r, d) in enumerate(pool.map(lambda c: load_clip(c, frames, size), clips)):
                rgb[i], depth[i] = r, d
                if bar is not None:
                    bar.update()
            rgb.flush()
            depth.flush()
            del rgb, depth
            np.save(staging / f"{split}_labels.npy", np.array([c.label for c in clips], dtype=np.int64))
            write_json_sorted(staging / f"{split}_clips.json", [c.key for c in clips])
            for kind in ("rgb", "depth", "labels"):
                files[f"{split}_{kind}.npy"] = sha256_file(staging / f"{split}_{kind}.npy")
    if bar is not None:
        bar.close()
    write_manifest(staging, files, frames=frames, size=list(size))


@register_dataset("egogesture")
def egogesture(
    root: Path,
    *,
    path: str | Path,
    labels: str | Path | None = None,
    frames: int = 8,
    size: Sequence[int] = (48, 64),
    train_subjects: Sequence[int] = TRAIN_SUBJECTS,
    val_subjects: Sequence[int] = VAL_SUBJECTS,
    test_subjects: Sequence[int] = TEST_SUBJECTS,
    on_missing: str = "error",
    bad_rows: str = "error",
    workers: int = 4,
    progress: bool = True,
    rgb_weights: str | None = None,
    depth_weights: str | None = None,
    pretrain_epochs: int | None = None,
) -> RawDataset:
    """EgoGesture clips: ``rgb`` ``(N, 3, frames, H, W)`` and ``depth`` ``(N, 1, frames, H, W)`` uint8.

    Args:
        root: cache directory (decoded clips go to ``root/egogesture/``).
        path: the dataset folder (frames, and ``labels-final-revised1/`` unless ``labels`` is given).
        labels: the label folder, default ``path/labels-final-revised1``.
        frames: T, frames sampled per gesture.
        size: ``(H, W)`` of the decoded frames (the release's frames are 240×320).
        train_subjects, val_subjects, test_subjects: the split by subject (default: the paper's).
        on_missing: ``error`` or ``skip`` (warn) for gestures whose frames are missing.
        bad_rows: ``error`` or ``skip`` (warn) for malformed label rows.
        workers: decoding threads.
        rgb_weights, depth_weights, pretrain_epochs: passed on to the backbones via the provenance.
    """
    for name, value in (("on_missing", on_missing), ("bad_rows", bad_rows)):
        if value not in ("error", "skip"):
            raise DataError(f"{name} must be 'error' or 'skip', got {value!r}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: not a directory; point path= at the extracted EgoGesture folder")
    labels = Path(labels).expanduser() if labels is not None else _child(path, LABEL_DIR)
    subjects = {"train": set(train_subjects), "val": set(val_subjects), "test": set(test_subjects)}
    clips = [c for c in list_clips(path, labels, bad_rows) if any(c.subject in s for s in subjects.values())]
    clips = _missing_frames(clips, frames, on_missing)
    members = {split: [c for c in clips if c.subject in subs] for split, subs in subjects.items()}
    key = _cache_key(
        path,
        labels,
        clips,
        frames=frames,
        size=list(size),
        subjects={k: sorted(v) for k, v in subjects.items()},
        version=CACHE_VERSION,
    )
    cache = Path(root) / "egogesture" / f"clips-{key}"
    manifest = load_or_publish(
        cache,
        lambda staging: _write_clips(staging, members, frames, size, workers, progress),
        "the EgoGesture clip cache",
    )
    splits = {
        split: RawSplit(
            {
                "rgb": np.load(cache / f"{split}_rgb.npy", mmap_mode="r"),
                "depth": np.load(cache / f"{split}_depth.npy", mmap_mode="r"),
            },
            np.load(cache / f"{split}_labels.npy"),
        )
        for split in members
    }
    provenance = {
        "source": "EgoGesture (Zhang et al., IEEE TMM 2018), RGB and depth frames with labels-final-revised1",
        "url": "https://nlpr.ia.ac.cn/iva/yfzhang/datasets/egogesture.html",
        "licence": "EgoGesture release agreement (academic research)",
        "path": str(path),
        "sha256": manifest["sha256"],
        "split": "by subject (the EgoGesture paper's train/val/test subjects)",
    }
    options = {"rgb_weights": rgb_weights, "depth_weights": depth_weights, "pretrain_epochs": pretrain_epochs}
    provenance.update({f"backbone.{k}": str(v) for k, v in options.items() if v is not None})
    class_names = tuple(str(c) for c in range(1, NUM_CLASSES + 1))
    return RawDataset("egogesture", splits, provenance, class_names)
