"""NTU RGB+D 60 (Shahroudy et al., CVPR 2016): official ``.skeleton`` files plus user RGB features.

**Skeleton files** (format of ``read_skeleton_file.m`` in github.com/shahroudy/NTURGB-D), text, one
record per line::

    framecount
    per frame:  bodycount
      per body: bodyID clipedEdges handLeftConfidence handLeftState handRightConfidence
                handRightState isResticted leanX leanY trackingState            (10 values)
                jointCount                                                       (25)
                per joint: x y z depthX depthY colorX colorY
                           orientationW orientationX orientationY orientationZ trackingState  (12 values)

File names ``SsssCcccPpppRrrrAaaa.skeleton`` give setup, camera, performer (subject), replication and
action (1..60; label = action - 1). 302 samples have missing or incomplete skeletons (the dataset's
``NTU_RGBD_samples_with_missing_skeletons.txt``): their files have no body in any frame. Such files
are skipped with a warning listing them (``on_empty="skip"``) or raise (``on_empty="error"``); pass
that list as ``ignore=`` to drop its samples silently. Any other deviation from the format is an error
naming the file, the line and what was expected.

**Skeleton input**, as the BM-NAS authors build it: ``(3, T, 25, 2)`` float32 — x, y, z (metres) ×
frames × joints × the first two bodies of each frame (a missing second body stays zero), centred on
joint 2 (middle of the spine, index 1) of the first body in every frame (``center=True``; unlike the
authors, absent bodies are not shifted), and linearly resampled from the file's frames to ``T=32``.

**Split** (cross-subject): test = the subjects outside the standard 20 training subjects
``1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38``; val = subjects
``2, 5, 9, 14`` of those (the authors' dev split); train = the other 16.

**RGB features** come from the user's own video backbone (``rgb=``), one array per sample keyed by the
skeleton file stem, raw shape ``(C, T, H, W)`` (or ``(C, T)``, ``(C, H, W)``, ``(C,)``):

* a directory of ``<stem>.npy`` files → one feature ``rgb.<rgb_layer>``;
* a directory of ``<layer>/<stem>.npy`` sub-directories → one feature ``rgb.<layer>`` per folder;
* one ``.npz`` with keys ``<stem>`` (one feature) or ``<layer>/<stem>`` (several).

The ``rgb`` input of each split then holds the samples' integer codes (:func:`sample_code`); the
backbone :class:`bmnas.features.backbones.ntu.PrecomputedFeatures` looks the arrays up. Samples without RGB
features are skipped (with a warning) or raise, as ``on_empty`` says.

Parsed skeletons are cached under ``root/ntu/`` as memory-mapped ``.npy`` files.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...core.errors import DataError
from ...core.fileio import sha256 as sha256_file
from ...core.fileio import write_json_sorted
from ...core.progress import bar as progress_bar
from .base import RawDataset, RawSplit, register_dataset
from .prepared import load_or_publish, write_manifest

TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
VAL_SUBJECTS = (2, 5, 9, 14)
NUM_JOINTS = 25
NUM_CLASSES = 60
BODY_FIELDS = 10
JOINT_FIELDS = 12
ORIGIN_JOINT = 1  # joint 2 (1-based), middle of the spine
NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")
LAYER_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
CACHE_VERSION = 1


# --------------------------------------------------------------------------- sample names
@dataclass(frozen=True)
class SampleName:
    """The fields of ``SsssCcccPpppRrrrAaaa``."""

    setup: int
    camera: int
    subject: int
    replication: int
    action: int

    @classmethod
    def parse(cls, stem: str, where: str | Path | None = None) -> SampleName:
        m = NAME.match(stem)
        if not m:
            raise DataError(
                f"{where or stem}: name {stem!r} is not SsssCcccPpppRrrrAaaa (setup, camera, performer, "
                f"replication, action)"
            )
        name = cls(*(int(g) for g in m.groups()))
        if not 1 <= name.action <= NUM_CLASSES:
            raise DataError(f"{where or stem}: action {name.action} outside NTU RGB+D 60's 1..{NUM_CLASSES}")
        return name

    @property
    def stem(self) -> str:
        return (
            f"S{self.setup:03d}C{self.camera:03d}P{self.subject:03d}R{self.replication:03d}A{self.action:03d}"
        )


def sample_code(stem: str) -> int:
    """``SsssCcccPpppRrrrAaaa`` → the integer of its 15 digits (a compact, order-free sample key)."""
    return int("".join(NAME.match(stem).groups()))


def sample_stem(code: int) -> str:
    """Inverse of :func:`sample_code`."""
    d = f"{int(code):015d}"
    return f"S{d[0:3]}C{d[3:6]}P{d[6:9]}R{d[9:12]}A{d[12:15]}"


# --------------------------------------------------------------------------- .skeleton parsing
@dataclass(frozen=True)
class Skeleton:
    """One parsed ``.skeleton`` file. M is the largest body count of any frame.

    Attributes:
        joints: ``(T, M, 25, 12)`` float64, the 12 joint values; zero where a frame has fewer bodies.
        bodies: ``(T, M, 10)`` float64, the 10 body values (bodyID rounded to float64).
        body_ids: ``(T, M)`` int64, the exact bodyIDs (tracking ids, ~7.2e16); -1 where no body.
        body_counts: ``(T,)`` bodies per frame.
    """

    path: Path
    joints: np.ndarray
    bodies: np.ndarray
    body_ids: np.ndarray
    body_counts: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.body_counts.shape[0])

    @property
    def is_empty(self) -> bool:
        """No frame, or no body in any frame (the dataset's "missing skeleton" samples)."""
        return not bool(self.body_counts.any())


def _int_line(lines: list[str], i: int, path: Path, what: str) -> int:
    if i >= len(lines):
        raise DataError(
            f"{path}: file ends at line {len(lines)}; expected {what} on line {i + 1} (truncated?)"
        )
    tokens = lines[i].split()
    if len(tokens) != 1 or not tokens[0].lstrip("-").isdigit():
        raise DataError(f"{path}, line {i + 1}: expected {what} (one integer), got {lines[i].strip()!r}")
    return int(tokens[0])


def _values(lines: list[str], i: int, n_lines: int, n_fields: int, path: Path, what: str) -> np.ndarray:
    """Parse ``n_lines`` lines of ``n_fields`` numbers starting at line index ``i``."""
    if i + n_lines > len(lines):
        raise DataError(
            f"{path}: file ends at line {len(lines)}; expected {n_lines} {what} line(s) from line {i + 1} "
            f"(truncated?)"
        )
    block = lines[i : i + n_lines]
    try:
        arr = np.array(" ".join(block).split(), dtype=np.float64)
    except ValueError:
        arr = np.empty(0)
    if arr.size == n_lines * n_fields:
        return arr.reshape(n_lines, n_fields)
    for k, line in enumerate(block):  # slow path: find the offending line
        tokens = line.split()
        if len(tokens) != n_fields:
            raise DataError(
                f"{path}, line {i + k + 1}: expected {n_fields} values ({what}), got {len(tokens)}: "
                f"{line.strip()[:80]!r}"
            )
        try:
            [float(t) for t in tokens]
        except ValueError:
            raise DataError(
                f"{path}, line {i + k + 1}: non-numeric {what} values {line.strip()[:80]!r}"
            ) from None
    raise DataError(f"{path}, lines {i + 1}-{i + n_lines}: cannot parse {what}")


Bodies = list[list[tuple[int, np.ndarray, np.ndarray]]]  # per frame: (bodyID, 10 values, (25, 12))


def _parse_fast(text: str, lines: list[str]) -> Bodies | None:
    """All numbers in one C-level pass, then a token walk; None if anything is off (→ strict parse)."""
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        return None
    counts = [len(line.split()) for line in lines]
    while counts and counts[-1] == 0:
        counts.pop()
    if values.size != sum(counts) or not counts or counts[0] != 1:
        return None
    expected, frames, pos, line = [1], [], 1, 1
    body = NUM_JOINTS * JOINT_FIELDS
    for _ in range(int(values[0])):
        if pos >= values.size:
            return None
        n_bodies = int(values[pos])
        expected.append(1)
        pos, line = pos + 1, line + 1
        bodies = []
        for _ in range(n_bodies):
            if pos + BODY_FIELDS + 1 + body > values.size or values[pos + BODY_FIELDS] != NUM_JOINTS:
                return None
            body_id = lines[line].split()[0]
            if not body_id.isdigit():
                return None
            start = pos + BODY_FIELDS + 1
            joints = values[start : start + body].reshape(NUM_JOINTS, JOINT_FIELDS)
            bodies.append((int(body_id), values[pos : pos + BODY_FIELDS], joints))
            expected += [BODY_FIELDS, 1] + [JOINT_FIELDS] * NUM_JOINTS
            pos, line = pos + BODY_FIELDS + 1 + body, line + 2 + NUM_JOINTS
        frames.append(bodies)
    if expected != counts or pos != values.size or values[0] != int(values[0]) or values[0] < 0:
        return None
    return frames


def _parse_strict(lines: list[str], path: Path) -> Bodies:
    """Line-by-line parse that names the first offending line (slow; used when the fast one fails)."""
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file; expected the frame count on line 1")
    n_frames = _int_line(lines, 0, path, "the frame count")
    if n_frames < 0:
        raise DataError(f"{path}, line 1: negative frame count {n_frames}")
    frames: Bodies = []
    i = 1
    for t in range(n_frames):
        count = _int_line(lines, i, path, f"the body count of frame {t + 1}")
        if count < 0:
            raise DataError(f"{path}, line {i + 1}: negative body count {count}")
        i += 1
        bodies = []
        for _ in range(count):
            info = _values(lines, i, 1, BODY_FIELDS, path, "body")[0]
            body_id = lines[i].split()[0]
            if not body_id.isdigit():
                raise DataError(f"{path}, line {i + 1}: bodyID {body_id!r} is not a non-negative integer")
            n_joints = _int_line(lines, i + 1, path, "the joint count")
            if n_joints != NUM_JOINTS:
                raise DataError(
                    f"{path}, line {i + 2}: joint count {n_joints}; NTU RGB+D bodies have {NUM_JOINTS} joints"
                )
            joints = _values(lines, i + 2, NUM_JOINTS, JOINT_FIELDS, path, "joint")
            bodies.append((int(body_id), info, joints))
            i += 2 + NUM_JOINTS
        frames.append(bodies)
    extra = [k for k in range(i, len(lines)) if lines[k].strip()]
    if extra:
        raise DataError(
            f"{path}, line {extra[0] + 1}: unexpected content after the {n_frames} frames declared on line 1"
        )
    return frames


def read_skeleton(path: str | Path) -> Skeleton:
    """Parse one ``.skeleton`` file exactly (see the module docstring for the format).

    Raises :class:`DataError` naming the file and line for a truncated file, a wrong joint count, a
    line with the wrong number of values or non-numeric values, or content after the last frame.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as text ({err})") from err
    lines = text.splitlines()
    frames = _parse_fast(text, lines)
    if frames is None:
        frames = _parse_strict(lines, path)
    n_frames = len(frames)
    counts = np.array([len(b) for b in frames], dtype=np.int64)
    m = int(counts.max()) if n_frames else 0
    joints = np.zeros((n_frames, m, NUM_JOINTS, JOINT_FIELDS))
    info = np.zeros((n_frames, m, BODY_FIELDS))
    ids = np.full((n_frames, m), -1, dtype=np.int64)
    for t, bodies in enumerate(frames):
        for b, (body_id, inf, jts) in enumerate(bodies):
            ids[t, b], info[t, b], joints[t, b] = body_id, inf, jts
    return Skeleton(path, joints, info, ids, counts)


def skeleton_array(skel: Skeleton, frames: int = 32, bodies: int = 2, center: bool = True) -> np.ndarray:
    """``(3, frames, 25, bodies)`` float32 model input from a parsed file (see module docstring).

    x, y, z of the first ``bodies`` bodies of every frame; NaN → 0; optionally centred on joint 2 of
    body 0 (present bodies only); then linear resampling over time (``align_corners=False``, the
    authors' choice; identity when the file has ``frames`` frames).
    """
    if skel.is_empty:
        raise DataError(f"{skel.path}: no body in any of its {skel.num_frames} frames")
    t_raw, m = skel.joints.shape[:2]
    xyz = np.zeros((t_raw, bodies, NUM_JOINTS, 3))
    k = min(m, bodies)
    xyz[:, :k] = np.nan_to_num(skel.joints[:, :k, :, :3])
    if center:
        present = (np.arange(bodies)[None, :] < skel.body_counts[:, None])[..., None, None]  # (T, B, 1, 1)
        origin = xyz[:, :1, ORIGIN_JOINT : ORIGIN_JOINT + 1, :]  # (T, 1, 1, 3)
        xyz = np.where(present, xyz - origin, 0.0)
    x = torch.from_numpy(xyz.transpose(3, 2, 1, 0).reshape(1, -1, t_raw)).float()  # (1, 3·25·B, T_raw)
    if t_raw != frames:
        x = F.interpolate(x, size=frames, mode="linear", align_corners=False)
    return x.reshape(3, NUM_JOINTS, bodies, frames).permute(0, 3, 1, 2).contiguous().numpy()


# --------------------------------------------------------------------------- RGB feature store
class FeatureStore:
    """User-computed per-sample RGB features (see the module docstring for the three layouts)."""

    def __init__(self, path: str | Path, default_layer: str = "features") -> None:
        self.path = Path(path).expanduser()
        self._npz = None
        self.files: dict[str, dict[str, Path | str]] = {}  # layer -> stem -> file or npz key
        if self.path.is_dir():
            self._index_dir(default_layer)
        elif self.path.suffix == ".npz" and self.path.is_file():
            self._index_npz(default_layer)
        else:
            raise DataError(
                f"{self.path}: RGB features must be a directory of <stem>.npy (or <layer>/<stem>.npy) "
                f"files or one .npz file"
            )
        for layer in self.files:
            if not LAYER_NAME.match(layer):
                raise DataError(f"{self.path}: layer name {layer!r} must match {LAYER_NAME.pattern}")
        if not any(self.files.values()):
            raise DataError(f"{self.path}: no RGB feature arrays found")

    def _index_dir(self, default_layer: str) -> None:
        top = {f.stem: f for f in sorted(self.path.glob("*.npy"))}
        subdirs = [d for d in sorted(self.path.iterdir()) if d.is_dir() and any(d.glob("*.npy"))]
        if top and subdirs:
            raise DataError(
                f"{self.path}: holds both <stem>.npy files and layer folders {[d.name for d in subdirs]}; "
                f"use one layout"
            )
        self.files = (
            {default_layer: top}
            if top
            else {d.name: {f.stem: f for f in sorted(d.glob("*.npy"))} for d in subdirs}
        )

    def _index_npz(self, default_layer: str) -> None:
        with np.load(self.path) as z:
            keys = list(z.files)
        for key in keys:
            layer, _, stem = key.rpartition("/")
            self.files.setdefault(layer or default_layer, {})[stem] = key

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.files)

    def stems(self) -> set[str]:
        """Stems that have an array for every layer."""
        sets = [set(v) for v in self.files.values()]
        return set.intersection(*sets) if sets else set()

    def fingerprint(self) -> str:
        """SHA-256 of the index (names, sizes, modification times): identifies the features."""
        h = hashlib.sha256(str(self.path).encode())
        if self.path.is_file():
            st = self.path.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        for layer, stems in self.files.items():
            for stem, ref in sorted(stems.items()):
                h.update(f"{layer}/{stem}".encode())
                if isinstance(ref, Path):
                    st = ref.stat()
                    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_npz"] = None
        return state

    def shape(self, stem: str, layer: str) -> tuple[int, ...]:
        """Array shape from the ``.npy`` header only."""
        ref = self.files[layer][stem]
        if isinstance(ref, Path):
            return tuple(np.load(ref, mmap_mode="r").shape)
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{ref}.npy") as fp:
            fmt = np.lib.format
            major, _ = fmt.read_magic(fp)
            shape, _, _ = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(fp)
        return tuple(shape)

    def check_shapes(self, stems: Iterable[str]) -> dict[str, tuple[int, ...]]:
        """Per-layer sample shape; raises naming the first array whose shape differs."""
        stems = sorted(stems)
        shapes = {}
        for layer in self.layers:
            ref = self.shape(stems[0], layer)
            for stem in stems[1:]:
                shape = self.shape(stem, layer)
                if shape != ref:
                    raise DataError(
                        f"{self._where(stem, layer)}: shape {shape} differs from {ref} of {stems[0]}; every "
                        f"sample's RGB feature must have the same shape"
                    )
            if len(ref) not in (1, 2, 3, 4):
                raise DataError(
                    f"{self._where(stems[0], layer)}: shape {ref}; expected (C,), (C, T), "
                    f"(C, H, W) or (C, T, H, W)"
                )
            shapes[layer] = ref
        return shapes

    def _where(self, stem: str, layer: str) -> str:
        ref = self.files[layer][stem]
        return str(ref) if isinstance(ref, Path) else f"{self.path}[{ref}]"

    def load(self, stem: str, layer: str) -> np.ndarray:
        ref = self.files[layer][stem]
        if isinstance(ref, Path):
            return np.load(ref)
        if self._npz is None:
            self._npz = np.load(self.path)
        return self._npz[ref]


# --------------------------------------------------------------------------- dataset
def read_name_list(path: str | Path) -> set[str]:
    """Sample names (``SsssCcccPpppRrrrAaaa`` tokens) listed in a text file, e.g. the official
    ``NTU_RGBD_samples_with_missing_skeletons.txt`` (its two header lines are ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: ignore list not found")
    return {tok for tok in path.read_text().split() if NAME.match(tok)}


def _list_skeletons(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory; point skeletons= at the extracted nturgb+d_skeletons/")
    files = sorted(folder.glob("*.skeleton")) or sorted(folder.rglob("*.skeleton"))
    if not files:
        raise DataError(f"{folder}: no .skeleton files found")
    out: dict[str, Path] = {}
    for f in files:
        SampleName.parse(f.stem, f)
        if f.stem in out:
            raise DataError(f"{f}: sample {f.stem} also at {out[f.stem]}")
        out[f.stem] = f
    return out


def split_of(subject: int, train_subjects: Sequence[int], val_subjects: Sequence[int]) -> str:
    if subject in val_subjects:
        return "val"
    return "train" if subject in train_subjects else "test"


def _report(names: list[str], what: str, on_empty: str) -> None:
    if not names:
        return
    msg = f"{len(names)} NTU sample(s) {what}: {', '.join(sorted(names)[:20])}" + (
        " ..." if len(names) > 20 else ""
    )
    if on_empty == "error":
        raise DataError(msg + "; pass on_empty='skip' to leave them out")
    warnings.warn(msg + "; skipped", stacklevel=3)


def _cache_key(files: dict[str, Path], **options) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for stem, f in sorted(files.items()):
        st = f.stat()
        h.update(f"{stem}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _write_skeletons(
    staging: Path,
    members: dict[str, list[str]],
    files: dict[str, Path],
    frames: int,
    center: bool,
    progress: bool,
) -> None:
    """Parse every member file once into ``staging/<split>_skeleton.npy`` (+ labels, names, manifest)."""
    empty: list[str] = []
    sums: dict[str, str] = {}
    bar = None
    if progress:
        bar = progress_bar(total=sum(map(len, members.values())), desc="parse NTU skeletons")
    for split, stems in members.items():
        out = np.lib.format.open_memmap(
            staging / f"{split}_all.npy",
            mode="w+",
            dtype=np.float32,
            shape=(len(stems), 3, frames, NUM_JOINTS, 2),
        )
        keep = []
        for i, stem in enumerate(stems):
            skel = read_skeleton(files[stem])
            if skel.is_empty:
                empty.append(stem)
            else:
                out[i] = skeleton_array(skel, frames, 2, center)
                keep.append(i)
            if bar is not None:
                bar.update()
        out.flush()
        if len(keep) == len(stems):
            del out
            (staging / f"{split}_all.npy").rename(staging / f"{split}_skeleton.npy")
        else:  # drop the rows of empty files
            final = np.lib.format.open_memmap(
                staging / f"{split}_skeleton.npy",
                mode="w+",
                dtype=np.float32,
                shape=(len(keep), 3, frames, NUM_JOINTS, 2),
            )
            for j in range(0, len(keep), 1024):
                final[j : j + 1024] = out[keep[j : j + 1024]]
            final.flush()
            del out, final
            (staging / f"{split}_all.npy").unlink()
        kept = [stems[i] for i in keep]
        np.save(
            staging / f"{split}_labels.npy",
            np.array([SampleName.parse(s).action - 1 for s in kept], dtype=np.int64),
        )
        write_json_sorted(staging / f"{split}_names.json", kept)
        for kind in ("skeleton", "labels"):
            sums[f"{split}_{kind}.npy"] = sha256_file(staging / f"{split}_{kind}.npy")
    if bar is not None:
        bar.close()
    write_manifest(staging, sums, empty=sorted(empty), frames=frames, center=center)


@register_dataset("ntu")
def ntu(
    root: Path,
    *,
    skeletons: str | Path,
    rgb: str | Path | None = None,
    rgb_layer: str = "features",
    frames: int = 32,
    center: bool = True,
    train_subjects: Sequence[int] = TRAIN_SUBJECTS,
    val_subjects: Sequence[int] = VAL_SUBJECTS,
    ignore: str | Path | None = None,
    on_empty: str = "skip",
    progress: bool = True,
    skeleton_weights: str | None = None,
    pretrain_epochs: int | None = None,
) -> RawDataset:
    """NTU RGB+D 60, cross-subject: ``skeleton`` ``(N, 3, frames, 25, 2)`` and optional ``rgb`` codes.

    Args:
        root: cache directory (parsed skeletons go to ``root/ntu/``).
        skeletons: the folder of ``.skeleton`` files (``nturgb+d_skeletons/``).
        rgb: the user's RGB features (module docstring); None → a skeleton-only dataset.
        rgb_layer: feature layer name for the single-layer RGB layouts.
        frames: T, the resampled number of frames.
        center: subtract joint 2 of the first body in each frame.
        train_subjects, val_subjects: the cross-subject split (val is carved out of train).
        ignore: a file listing samples to leave out (e.g. the official missing-skeleton list).
        on_empty: ``skip`` (warn) or ``error`` for samples without skeletons or RGB features.
        skeleton_weights, pretrain_epochs: passed on to the backbones through the provenance.
    """
    if on_empty not in ("skip", "error"):
        raise DataError(f"on_empty must be 'skip' or 'error', got {on_empty!r}")
    if not set(val_subjects) <= set(train_subjects):
        raise DataError(f"val_subjects {sorted(val_subjects)} must be among train_subjects")
    files = _list_skeletons(Path(skeletons).expanduser())
    ignored = read_name_list(ignore) if ignore else set()
    files = {s: f for s, f in files.items() if s not in ignored}
    store = FeatureStore(rgb, rgb_layer) if rgb is not None else None
    if store is not None:
        have = store.stems()
        _report([s for s in files if s not in have], f"have no RGB features in {store.path}", on_empty)
        files = {s: f for s, f in files.items() if s in have}
        if not files:
            raise DataError(f"{store.path}: no RGB feature array matches a skeleton file stem")
        store.check_shapes(files)
    members: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for stem in sorted(files):
        members[split_of(SampleName.parse(stem).subject, train_subjects, val_subjects)].append(stem)
    key = _cache_key(files, frames=frames, center=center, members=members, version=CACHE_VERSION)
    cache = Path(root) / "ntu" / f"skeletons-{key}"
    manifest = load_or_publish(
        cache,
        lambda staging: _write_skeletons(staging, members, files, frames, center, progress),
        "the NTU skeleton cache",
    )
    _report(manifest.get("empty", []), "have no body in any frame (missing skeletons)", on_empty)
    splits = {}
    for split in members:
        names = json.loads((cache / f"{split}_names.json").read_text())
        inputs: dict[str, np.ndarray] = {}  # the authors' order: video, then skeleton
        if store is not None:
            inputs["rgb"] = np.array([sample_code(s) for s in names], dtype=np.int64)
        inputs["skeleton"] = np.load(cache / f"{split}_skeleton.npy", mmap_mode="r")
        splits[split] = RawSplit(inputs, np.load(cache / f"{split}_labels.npy"))
    provenance = {
        "source": "NTU RGB+D 60 (Shahroudy et al., CVPR 2016), official .skeleton files",
        "url": "https://rose1.ntu.edu.sg/dataset/actionRecognition/",
        "licence": "NTU ROSE Lab release agreement (non-commercial research)",
        "skeletons": str(Path(skeletons).expanduser()),
        "sha256": manifest["sha256"],
        "split": f"cross-subject; val subjects {sorted(val_subjects)}",
    }
    if store is not None:  # the features are identified by their index (names, sizes, times)
        both = f"{manifest['sha256']}|{store.fingerprint()}"
        provenance["sha256"] = hashlib.sha256(both.encode()).hexdigest()
        provenance.update(
            {
                "rgb_features": str(store.path),
                "rgb_layers": ",".join(store.layers),
                "rgb_default_layer": rgb_layer,
            }
        )
    options = {"skeleton_weights": skeleton_weights, "pretrain_epochs": pretrain_epochs}
    provenance.update({f"backbone.{k}": str(v) for k, v in options.items() if v is not None})
    class_names = tuple(f"A{a:03d}" for a in range(1, NUM_CLASSES + 1))
    return RawDataset("ntu", splits, provenance, class_names)
