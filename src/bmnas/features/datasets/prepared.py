"""Prepared dataset files: written into a staging folder beside their final place, published with one
rename, and listed with their SHA-256 in a ``manifest.json``.

A killed preparation leaves at most a staging folder (:func:`bmnas.features.datasets.base.create_dataset`
removes those), never a half-written dataset; the manifest lets a later run detect a corrupt or
stale one and prepare it again: :func:`read_manifest` checks it against
:data:`~bmnas.core.schemas.PREPARED_MANIFEST` and its own checksum before anything reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ...core.errors import PreparedDataError
from ...core.fileio import make_staging_dir, naming_write_errors, publish_dir, remove_dir, write_json_sorted
from ...core.fileio import sha256 as sha256_file
from ...core.schema import load_json
from ...core.schemas import PREPARED_MANIFEST

log = logging.getLogger(__name__)

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
    manifest = {**fields, "files": dict(files), "sha256": _checksum(files)}
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


def _checksum(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: Path, **expected: object) -> dict:
    """``folder``'s manifest, checked against :data:`~bmnas.core.schemas.PREPARED_MANIFEST` and its
    own checksum (``sha256`` of its file list), and to hold the ``expected`` fields (format, options).

    Raises:
        PreparedDataError: no readable manifest, a damaged one, or one of another format or options.
    """
    path = folder / MANIFEST
    try:
        manifest = load_json(path, PREPARED_MANIFEST, error=PreparedDataError)
    except FileNotFoundError:
        raise PreparedDataError(f"no manifest ({path} is missing)") from None
    if manifest["sha256"] != _checksum(manifest["files"]):
        raise PreparedDataError(f"{path}: sha256 is not the checksum of its files (damaged or edited)")
    if any(manifest.get(k) != v for k, v in expected.items()):
        raise PreparedDataError("stale manifest (other format or options)")
    return manifest


def load_or_publish(final: Path, write: Callable[[Path], None], what: str) -> dict:
    """The manifest of ``final``, prepared first with :func:`publish` when there is none or it is
    damaged (logged: ``what`` is prepared again)."""
    try:
        return read_manifest(final)
    except PreparedDataError as err:
        if final.exists():
            log.warning("%s at %s is unusable (%s); preparing it again", what, final, err)
    publish(final, write)
    return read_manifest(final)
