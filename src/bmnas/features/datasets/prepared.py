"""Prepared dataset files: written into a staging folder beside their final place, published with one
rename, and listed with their SHA-256 in a ``manifest.json``.

A killed preparation leaves at most a staging folder (:func:`bmnas.features.datasets.base.create_dataset`
removes those), never a half-written dataset; the manifest lets a later run detect a corrupt or
stale one and prepare it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ...core.errors import PreparedDataError
from ...core.fileio import make_staging_dir, naming_write_errors, publish_dir, remove_dir, write_json_sorted
from ...core.fileio import sha256 as sha256_file

MANIFEST = "manifest.json"


def publish(final: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(staging)`` on a fresh folder, then move that folder to ``final`` in one rename."""
    staging = make_staging_dir(final)
    try:
        write(staging)
    except BaseException:
        remove_dir(staging)
        raise
    publish_dir(staging, final)


def write_manifest(folder: Path, files: Mapping[str, str], **fields: object) -> dict:
    """Write ``folder/manifest.json``: ``fields``, each file's SHA-256, and the SHA-256 of that list.

    The last is the dataset's checksum (its provenance ``sha256``). Returns the manifest.
    """
    checksum = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest = {**fields, "files": dict(files), "sha256": checksum}
    write_json_sorted(folder / MANIFEST, manifest)
    return manifest


def publish_arrays(final: Path, arrays: Mapping[str, np.ndarray], **fields: object) -> dict:
    """Publish ``arrays`` as ``final/<key>.npy`` with their manifest (see :func:`write_manifest`)."""
    manifest: dict = {}

    def write(staging: Path) -> None:
        files = {}
        for key, arr in arrays.items():
            with naming_write_errors(final):  # a full disk names the folder, not its staging copy
                np.save(staging / f"{key}.npy", arr, allow_pickle=False)
            files[f"{key}.npy"] = sha256_file(staging / f"{key}.npy")
        manifest.update(write_manifest(staging, files, **fields))

    publish(final, write)
    return manifest


def read_manifest(folder: Path, **expected: object) -> dict:
    """``folder``'s manifest, checked to hold the ``expected`` fields (the format and options).

    Raises:
        PreparedDataError: no readable manifest, or one written for another format or options.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise PreparedDataError(f"no readable manifest ({err})") from err
    if any(manifest.get(k) != v for k, v in expected.items()):
        raise PreparedDataError("stale manifest (other format or options)")
    return manifest
