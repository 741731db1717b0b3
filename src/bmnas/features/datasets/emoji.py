"""Emoji: a picture and its name, classified into the 9 Unicode emoji categories (image + text).

Built on first use from the npm package ``emoji-datasource-google`` 16.0.0 (iamcal/emoji-data; data
MIT, © Cal Henderson; images from Google's Noto Emoji v2.048, Apache License 2.0, as the package's
README states). The tarball is fetched with the ordinary npm client (``npm pack``, checked against
its pinned SHA-512 integrity) into ``<root>/emoji/sources/`` and read with :mod:`tarfile`; nothing is
installed. Offline, put the tarball there yourself (it is what ``npm pack
emoji-datasource-google@16.0.0`` writes).

Samples (``emoji.json`` records with a Google image, category ``Component`` — the five skin-tone
swatches — left out):

* **image** ``(3, 64, 64)`` uint8 RGB: ``img/google/64/<image>``, alpha-composited on white.
* **text** ``()`` str: the emoji's name, lower-cased (``"grinning face"``, ``"united states flag"``);
  ``text="short_name"`` gives the colon code instead (``"grinning"``, ``"us"``). A skin-tone variant
  appends its tones CLDR-style (``"waving hand: medium skin tone"``).
* **label** ``()`` int64: the category, one of :data:`CATEGORIES`.

By default there are 1,906 base emoji; ``skin_tones=True`` adds the 1,875 skin-tone variants (then
60 % of the samples are "People & Body").

**Splits** are group-aware: near-duplicates share a group and a group never straddles two splits.
A group is a base emoji with all its skin-tone variants, and (``group_genders=True``) the man /
woman / person forms of the same emoji (see :func:`group_key`). Groups are assigned per category
(stratified; a group counts for its majority category) after a seeded shuffle, largest first, each
to the split furthest below its target share (default 60 / 20 / 20 % of the samples).

The prepared arrays live in ``<root>/emoji/<variant>/`` with a manifest of SHA-256 checksums of the
source tarball and of every array; a corrupt or stale file is detected when loading and the variant
is prepared again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ...core.data import SPLITS
from ...core.errors import BmnasError, PreparedDataError
from ...core.fileio import sha256 as sha256_file
from .base import OptionError, RawDataset, RawSplit, register_dataset
from .prepared import publish_arrays, read_manifest

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NPM_PACKAGE, NPM_VERSION = "emoji-datasource-google", "16.0.0"
TARBALL = f"{NPM_PACKAGE}-{NPM_VERSION}.tgz"
TARBALL_INTEGRITY = (  # npm's dist.integrity of emoji-datasource-google@16.0.0
    "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
)
CATALOGUE = "package/emoji.json"
IMAGE_DIR = "package/img/google/64/"
IMAGE_SIZE = 64
CATEGORIES = (
    "Smileys & Emotion",
    "People & Body",
    "Animals & Nature",
    "Food & Drink",
    "Travel & Places",
    "Activities",
    "Objects",
    "Symbols",
    "Flags",
)
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
# Gendered codepoints and the gender-neutral one they are grouped with (group_genders=True).
NEUTRAL_FORM = {
    "1F468": "1F9D1",
    "1F469": "1F9D1",
    "1F466": "1F9D2",
    "1F467": "1F9D2",
    "1F474": "1F9D3",
    "1F475": "1F9D3",
}
GENDER_SIGNS = {"2640", "2642"}  # female / male sign, as in "<person>-200D-2642-FE0F"

PROVENANCE = {
    "source": f"npm package {NPM_PACKAGE}@{NPM_VERSION} (iamcal/emoji-data: emoji.json and "
    f"img/google/64/*.png), fetched with `npm pack`",
    "data_licence": "MIT (emoji-data, © 2013 Cal Henderson)",
    "image": "Google Noto Emoji v2.048 images, 64×64 PNG, composited on white",
    "image_licence": "Apache License 2.0 (Noto Emoji, as stated in the emoji-datasource README)",
    "text": "the emoji's Unicode/CLDR name from emoji.json",
    "label": "the emoji's Unicode category (9 classes; 'Component' left out)",
}


class EmojiDataError(BmnasError, RuntimeError):
    """A source file (tarball, emoji.json or a PNG) that cannot be read; the message names it."""


@dataclass(frozen=True)
class EmojiOptions:
    """How the dataset is built; every field changes the prepared arrays (and their checksum).

    Attributes:
        split_seed: seed of the group shuffle of the split.
        fractions: target shares of train / val / test (of each category's samples).
        skin_tones: add the skin-tone variants (grouped with their base emoji).
        group_genders: also group man / woman / person forms of the same emoji.
        text: ``"name"`` (lower-cased Unicode name) or ``"short_name"`` (the colon code).
    """

    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    skin_tones: bool = False
    group_genders: bool = True
    text: str = "name"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if len(self.fractions) != 3 or min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise OptionError(f"fractions must be 3 positive shares summing to 1, got {self.fractions}")
        if self.text not in ("name", "short_name"):
            raise OptionError(f"text must be 'name' or 'short_name', got {self.text!r}")

    def variant(self, source: str) -> str:
        """Directory name of the prepared arrays for these options and the source tarball."""
        text = json.dumps({"format": FORMAT_VERSION, "source": source, **asdict(self)}, sort_keys=True)
        return f"v{FORMAT_VERSION}-" + hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class EmojiRecord:
    """One sample before decoding: its image file, text, category index and near-duplicate group."""

    unified: str
    image: str
    text: str
    label: int
    group: str


# ------------------------------------------------------------------------------------------- fetching
def integrity_of(path: Path) -> str:
    """npm-style ``sha512-<base64>`` integrity string of a file."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def fetch_tarball(directory: Path) -> Path:
    """``emoji-datasource-google-16.0.0.tgz`` under ``directory``, fetched with ``npm pack`` if absent.

    The tarball (74 MB) is checked against its pinned SHA-512 integrity either way.
    """
    target = directory / TARBALL
    if not target.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise EmojiDataError(
                f"the emoji dataset needs {TARBALL} from the npm registry but npm is not installed; "
                f"install Node.js/npm, or run `npm pack {NPM_PACKAGE}@{NPM_VERSION}` elsewhere and put "
                f"the file at {target}"
            )
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            cmd = [
                npm,
                "pack",
                f"{NPM_PACKAGE}@{NPM_VERSION}",
                "--pack-destination",
                tmp,
                "--silent",
                "--no-fund",
                "--no-audit",
            ]
            log.info("fetching %s@%s (74 MB) with `npm pack`", NPM_PACKAGE, NPM_VERSION)
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            part = Path(tmp) / TARBALL
            if done.returncode != 0 or not part.is_file():
                raise EmojiDataError(
                    f"`{' '.join(cmd[1:4])}` failed (exit {done.returncode}): "
                    f"{(done.stderr or done.stdout).strip()[-500:]}; alternatively put {TARBALL} at {target}"
                )
            part.replace(target)
    found = integrity_of(target)
    if found != TARBALL_INTEGRITY:
        raise EmojiDataError(
            f"{target}: integrity {found} does not match the pinned {TARBALL_INTEGRITY}; "
            f"delete it to fetch it again"
        )
    return target


def read_tarball(path: Path, skip_images: bool = False) -> tuple[list[dict], dict[str, bytes]]:
    """``(emoji.json records, image file name -> PNG bytes)`` from one sequential pass over the tarball.

    Raises:
        EmojiDataError: naming the tarball or the member that is missing or unreadable.
    """
    catalogue, images = None, {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                if member.name == CATALOGUE:
                    raw = tf.extractfile(member).read()
                    try:
                        catalogue = json.loads(raw)
                    except (UnicodeDecodeError, ValueError) as err:
                        raise EmojiDataError(f"{path}:{CATALOGUE}: not valid JSON ({err})") from err
                elif member.name.startswith(IMAGE_DIR) and not skip_images:
                    images[member.name.removeprefix(IMAGE_DIR)] = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise EmojiDataError(f"{path}: not a readable tarball ({err})") from err
    if catalogue is None:
        raise EmojiDataError(f"{path}: has no {CATALOGUE}; is it the {NPM_PACKAGE} npm tarball?")
    if not isinstance(catalogue, list):
        raise EmojiDataError(
            f"{path}:{CATALOGUE}: expected a JSON list of emoji records, got {type(catalogue).__name__}"
        )
    return catalogue, images


def decode_png(data: bytes, where: str) -> np.ndarray:
    """A 64×64 PNG -> ``(3, 64, 64)`` uint8 RGB, transparent pixels composited on white."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    except Exception as err:  # Pillow raises many types for truncated or malformed files
        raise EmojiDataError(f"{where}: cannot decode PNG ({type(err).__name__}: {err})") from err
    if rgba.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise EmojiDataError(f"{where}: image is {rgba.shape[1]}×{rgba.shape[0]}, expected 64×64")
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.rint(rgb).astype(np.uint8).transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------- catalogue
def group_key(unified: str, genders: bool = True) -> str:
    """The near-duplicate group of an emoji, from its codepoints (``"1F3C3-200D-2642-FE0F"``).

    Variation selectors (FE0F) are dropped. With ``genders``, a ZWJ gender sign (2640/2642) is dropped
    and man/woman, boy/girl, old man/old woman map to person, child, older person, so that
    "man running", "woman running" and "person running" share a group (skin-tone variants are grouped
    with their base by the caller).
    """
    cps = [c for c in unified.upper().split("-") if c != "FE0F"]
    if genders:
        out: list[str] = []
        for c in cps:
            if c in GENDER_SIGNS and out and out[-1] == "200D":
                out.pop()
                continue
            out.append(NEUTRAL_FORM.get(c, c))
        cps = out
    return "-".join(cps)


def tone_text(tones: str) -> str:
    """``"1F3FB-1F3FD"`` -> ``"light skin tone, medium skin tone"`` (a repeated tone said once)."""
    names = [SKIN_TONES.get(t, t.lower()) for t in tones.upper().split("-")]
    return ", ".join(dict.fromkeys(names))


def catalogue_records(
    catalogue: Iterable[Mapping], opts: EmojiOptions, where: str = CATALOGUE
) -> list[EmojiRecord]:
    """The samples of ``emoji.json``: records with a Google image in one of :data:`CATEGORIES`."""
    records = []
    for i, e in enumerate(catalogue):
        try:
            category, unified = e["category"], e["unified"]
            if category not in CATEGORIES or not e.get("has_img_google", False):
                continue
            base_text = e["name"].lower() if opts.text == "name" else e["short_name"]
            group = group_key(unified, opts.group_genders)
            records.append(EmojiRecord(unified, e["image"], base_text, CATEGORIES.index(category), group))
            if opts.skin_tones:
                for tones, v in sorted((e.get("skin_variations") or {}).items()):
                    if v.get("has_img_google", False):
                        text = f"{base_text}: {tone_text(tones)}"
                        records.append(
                            EmojiRecord(v["unified"], v["image"], text, CATEGORIES.index(category), group)
                        )
        except (KeyError, TypeError, AttributeError) as err:
            raise EmojiDataError(f"{where}: record {i} is malformed ({type(err).__name__}: {err})") from err
    if not records:
        raise EmojiDataError(f"{where}: no emoji with a Google image in the categories {CATEGORIES}")
    return records


def group_split(
    labels: np.ndarray, groups: np.ndarray, fractions=(0.6, 0.2, 0.2), seed: int = 0
) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per sample; a group never straddles two splits.

    Per category (a group counts for its majority label), groups are shuffled with ``seed``, ordered
    largest first (stable), and each goes to the split furthest below ``fraction × category size``.
    """
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    majority = np.array(
        [Counter(labels[inverse == g].tolist()).most_common(1)[0][0] for g in range(len(uniq))]
    )
    assignment = np.empty(len(uniq), dtype=np.int64)
    frac = np.asarray(fractions, dtype=np.float64)
    for c in np.unique(majority):
        members = rng.permutation(np.flatnonzero(majority == c))
        members = members[np.argsort(-sizes[members], kind="stable")]
        target, filled = frac * sizes[members].sum(), np.zeros(len(frac))
        for g in members:
            s = int(np.argmax(target - filled))
            assignment[g] = s
            filled[s] += sizes[g]
    return assignment[inverse]


# ---------------------------------------------------------------------------------------- preparation
def build_arrays(
    catalogue: list[dict], images: Mapping[str, bytes], opts: EmojiOptions, where: str = "tarball"
) -> dict[str, np.ndarray]:
    """All prepared arrays: ``<split>.{image,text,label,group,unified}``.

    Shapes: image ``(N, 3, 64, 64)`` uint8, text ``(N,)`` str, label ``(N,)`` int64, group ``(N,)``
    int64 (a group id shared by near-duplicates) and unified ``(N,)`` str (the codepoints).
    """
    records = catalogue_records(catalogue, opts, f"{where}:{CATALOGUE}")
    pictures = []
    for r in records:
        if r.image not in images:
            raise EmojiDataError(
                f"{where}:{IMAGE_DIR}{r.image}: missing (listed in {CATALOGUE} for {r.text!r})"
            )
        pictures.append(decode_png(images[r.image], f"{where}:{IMAGE_DIR}{r.image}"))
    labels = np.array([r.label for r in records], dtype=np.int64)
    _, group_ids = np.unique(np.array([r.group for r in records]), return_inverse=True)
    split = group_split(labels, group_ids, opts.fractions, opts.split_seed)
    pictures_arr = np.stack(pictures)
    texts = np.array([r.text for r in records], dtype=str)
    unified = np.array([r.unified for r in records], dtype=str)
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(SPLITS):
        idx = np.flatnonzero(split == i)
        arrays[f"{s}.image"] = pictures_arr[idx]
        arrays[f"{s}.text"] = texts[idx]
        arrays[f"{s}.label"] = labels[idx]
        arrays[f"{s}.group"] = group_ids[idx].astype(np.int64)
        arrays[f"{s}.unified"] = unified[idx]
    return arrays


def prepare(directory: Path, tarball: Path, opts: EmojiOptions) -> dict:
    """Build the arrays from ``tarball`` and publish them with their manifest to ``directory`` atomically."""
    catalogue, images = read_tarball(tarball)
    arrays = build_arrays(catalogue, images, opts, where=str(tarball))
    sources = {tarball.name: sha256_file(tarball)}
    return publish_arrays(directory, arrays, format=FORMAT_VERSION, options=_options(opts), sources=sources)


def _options(opts: EmojiOptions) -> dict:
    """``opts`` as its manifest holds them (JSON: tuples become lists)."""
    return json.loads(json.dumps(asdict(opts)))


def load_prepared(directory: Path, opts: EmojiOptions) -> tuple[dict, dict[str, np.ndarray]]:
    """``(manifest, arrays)`` after checking every file's SHA-256; raises :class:`PreparedDataError`."""
    manifest = read_manifest(directory, format=FORMAT_VERSION, options=_options(opts))
    arrays = {}
    for file, digest in manifest["files"].items():
        path = directory / file
        if not path.is_file() or sha256_file(path) != digest:
            raise PreparedDataError(f"{file} is missing or corrupt (SHA-256 mismatch)")
        arrays[file.removesuffix(".npy")] = np.load(path, mmap_mode="r", allow_pickle=False)
    return manifest, arrays


@register_dataset("emoji")
def emoji(root: Path, tarball: str | Path | None = None, **options) -> RawDataset:
    """The emoji dataset under ``root/emoji``; options: see :class:`EmojiOptions`.

    Args:
        root: cache directory; the npm tarball goes to ``root/emoji/sources``.
        tarball: use this ``emoji-datasource-*`` tarball instead of the pinned npm package (its
            integrity is not checked; the prepared arrays are kept apart by its SHA-256).

    Inputs: ``image (N, 3, 64, 64)`` uint8 RGB and ``text (N,)`` str; labels ``(N,)`` int64 in
    ``range(9)`` (:data:`CATEGORIES`).
    """
    opts = EmojiOptions(**options)
    base = Path(root) / "emoji"
    source = f"{NPM_PACKAGE}@{NPM_VERSION}" if tarball is None else "file-" + sha256_file(tarball)[:16]
    directory = base / opts.variant(source)
    try:
        manifest, arrays = load_prepared(directory, opts)
    except PreparedDataError as err:
        if directory.exists():
            log.warning("emoji dataset at %s is unusable (%s); preparing it again", directory, err)
        path = fetch_tarball(base / "sources") if tarball is None else Path(tarball)
        log.info(
            "preparing the emoji dataset in %s from %s [%s; images %s]",
            directory,
            PROVENANCE["source"],
            PROVENANCE["data_licence"],
            PROVENANCE["image_licence"],
        )
        prepare(directory, path, opts)
        manifest, arrays = load_prepared(directory, opts)
    splits = {
        s: RawSplit({"image": arrays[f"{s}.image"], "text": arrays[f"{s}.text"]}, arrays[f"{s}.label"])
        for s in SPLITS
    }
    provenance = {
        **PROVENANCE,
        "split": f"group-aware, stratified by category, seed {opts.split_seed}, shares "
        f"{'/'.join(f'{f:g}' for f in opts.fractions)}; skin-tone variants "
        f"{'included' if opts.skin_tones else 'left out'}"
        f"{', gender forms grouped' if opts.group_genders else ''}",
        "path": str(directory),
        "sha256": manifest["sha256"],
    }
    return RawDataset("emoji", splits, provenance, CATEGORIES)


def sample_info(raw: RawDataset, split: str) -> dict[str, np.ndarray]:
    """Per-sample ``group`` ids and ``unified`` codepoints of ``split`` (from the prepared files)."""
    directory = Path(raw.provenance["path"])
    return {k: np.load(directory / f"{split}.{k}.npy") for k in ("group", "unified")}
