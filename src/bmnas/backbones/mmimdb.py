"""MM-IMDB backbones: a VGG-style poster CNN and the Maxout-MLP plot encoder (paper §4.1).

* ``text``: :class:`MaxoutMLP` as in GMU / BM-NAS: Maxout(300→64, k=5) → BN → Dropout(0.5) →
  Maxout(64→128, k=5) → BN → Dropout(0.5) → Linear(128→23). Features ``text.maxout1`` ``(64,)`` and
  ``text.maxout2`` ``(128,)``. Pre-trained by bmnas on the train split (BCE, 23 genres); the BM-NAS
  authors left it random during search.
* ``image``, default: :class:`SmallVGG`, an ImageNet-free VGG-style CNN pre-trained by bmnas on the
  train posters, resized to ``image_size`` (default 128×80). Features ``image.block2`` ``(64, 32, 20)``,
  ``image.block3`` ``(128, 16, 10)``, ``image.block4`` ``(256, 8, 5)``, ``image.fc`` ``(256,)``.
* ``image``, with ``image_weights=PATH``: :class:`VGG19Features`, torchvision's VGG19 ``features``
  layout, loaded from the user's file (e.g. torchvision's ``vgg19-dcbb9e9d.pth`` state dict; only the
  ``features.*`` tensors are used). Features as in BM-NAS: ``image.relu4_1`` ``(512, 32, 20)``,
  ``image.relu4_4`` ``(512, 32, 20)``, ``image.relu5_3`` ``(512, 16, 10)``, ``image.pool5``
  ``(512, 8, 5)`` on 256×160 posters. Unlike BM-NAS, the input is scaled to 0..1 and normalised with
  the ImageNet mean/std those weights expect.

This module also holds the small pre-training helpers (:func:`train_classifier`, :func:`pretrained`)
that the NTU and EgoGesture backbones reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..cache import dataset_checksum, sha256_file, write_json_atomic
from ..errors import DataError
from .base import Backbone, register_backbones

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_CFG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
)
VGG19_LAYERS = {
    "relu4_1": "features.20",
    "relu4_4": "features.26",
    "relu5_3": "features.33",
    "pool5": "features.36",
}
SMALL_VGG_LAYERS = {"block2": "block2", "block3": "block3", "block4": "block4", "fc": "fc"}
MAXOUT_LAYERS = {"maxout1": "maxout1", "maxout2": "maxout2"}


# --------------------------------------------------------------------------- pre-training helpers
def weights_key(**parts) -> str:
    """A short stable hash of everything that determines pre-trained weights (cache file names)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients: a frozen backbone."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_weights(
    module: nn.Module, path: str | Path, *, prefix: str = "", strict: bool = True, assign: bool = False
) -> None:
    """Load a state dict file into ``module``; ``prefix`` selects (and strips) a key prefix.

    Accepts a bare state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``;
    ``assign=True`` for a module built on the meta device (no initialisation cost).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: backbone weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise DataError(f"{path}: cannot be read as a PyTorch state dict ({err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    if missing and strict:
        raise DataError(
            f"{path}: missing {len(missing)} tensors for {type(module).__name__} (first: {missing[:4]}); "
            f"the file must hold this architecture's state dict"
        )
    wrong = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise DataError(f"{path}: tensor shapes differ from {type(module).__name__}: {wrong[:4]}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False, assign=assign)


def train_classifier(
    model: nn.Module,
    inputs,
    labels: np.ndarray,
    *,
    multilabel: bool,
    epochs: int,
    to_tensor: Callable[[np.ndarray], torch.Tensor],
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
    desc: str = "pretrain",
    device: str | torch.device | None = None,
) -> list[float]:
    """Train ``model`` (raw batch → logits) on ``inputs[i]``, ``labels[i]``; returns the epoch losses.

    ``inputs`` is any array-like indexed by sorted integer arrays (ndarray, memmap, lazy HDF5 rows);
    each batch is converted by ``to_tensor``. Adam with weight decay, fixed epochs, no selection.
    Runs on ``device`` (default: CUDA when available, else CPU); the model is left on the CPU.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    model.train()
    losses = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * ((n + batch_size - 1) // batch_size), desc=desc, leave=False)
    for _ in range(epochs):
        order, total = rng.permutation(n), 0.0
        for i in range(0, n, batch_size):
            idx = np.sort(order[i : i + batch_size])
            if len(idx) < 2 and n > 1:  # BatchNorm needs two samples
                continue
            x = to_tensor(inputs[idx]).to(device, non_blocking=True)
            y = torch.as_tensor(np.asarray(labels[idx])).to(device)
            y = y.float() if multilabel else y.long()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            if bar is not None:
                bar.update()
        losses.append(total / max(n, 1))
    if bar is not None:
        bar.close()
    model.to("cpu")
    return losses


def pretrained(
    model: nn.Module, cache_file: Path, train: Callable[[nn.Module], list[float]], meta: dict | None = None
) -> nn.Module:
    """Load ``model``'s weights from ``cache_file``, or run ``train(model)`` and save them there.

    A JSON sidecar (same name, ``.json``) records the weights' SHA-256, the epoch losses, the time
    taken and ``meta``; weights whose checksum does not match are trained again.
    """
    cache_file = Path(cache_file)
    sidecar = cache_file.with_suffix(".json")
    try:
        recorded = json.loads(sidecar.read_text())["sha256"]
        if recorded == sha256_file(cache_file):
            load_weights(model, cache_file)
            log.info("loaded pre-trained backbone %s", cache_file)
            return freeze(model)
        log.warning("pre-trained backbone %s fails its checksum; training again", cache_file)
    except (OSError, ValueError, KeyError, DataError):
        pass
    start = time.perf_counter()
    losses = train(model)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cache_file)
    write_json_atomic(
        sidecar,
        {
            **(meta or {}),
            "sha256": sha256_file(cache_file),
            "losses": losses,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    return freeze(model)


def option(explicit, raw, key: str, default=None, cast: Callable = str):
    """A backbone option: the explicit argument, else ``raw.provenance['backbone.<key>']``, else default."""
    if explicit is not None:
        return explicit
    value = raw.provenance.get(f"backbone.{key}")
    return default if value is None else cast(value)


# --------------------------------------------------------------------------- modules
def images_to_tensor(batch: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(B, 3, H, W)`` → float, scaled to 0..1 and normalised with the ImageNet mean/std."""
    x = torch.as_tensor(np.asarray(batch)).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def text_to_tensor(batch: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(batch), dtype=torch.float32)


class Maxout(nn.Module):
    """Maxout unit: ``max_k (W x + b)_k``, ``(B, d_in) → (B, d_out)`` with ``k`` pieces per unit."""

    def __init__(self, d_in: int, d_out: int, k: int = 5) -> None:
        super().__init__()
        self.d_out, self.k = d_out, k
        self.lin = nn.Linear(d_in, d_out * k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).view(*x.shape[:-1], self.d_out, self.k).amax(-1)


class MaxoutMLP(nn.Module):
    """The GMU / BM-NAS plot encoder: ``(B, 300)`` word2vec average → ``(B, num_outputs)`` logits."""

    def __init__(
        self, d_in: int = 300, hidden: int = 64, num_outputs: int = 23, k: int = 5, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.maxout1 = Maxout(d_in, hidden, k)  # (B, 64)
        self.drop1 = nn.Sequential(nn.BatchNorm1d(hidden), nn.Dropout(dropout))
        self.maxout2 = Maxout(hidden, 2 * hidden, k)  # (B, 128)
        self.drop2 = nn.Sequential(nn.BatchNorm1d(2 * hidden), nn.Dropout(dropout))
        self.head = nn.Linear(2 * hidden, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop2(self.maxout2(self.drop1(self.maxout1(x)))))


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallVGG(nn.Module):
    """VGG-style poster CNN: resize to ``size``, 4 × (conv3×3 → BN → ReLU → max-pool 2), then
    global average pool → ``fc`` (Linear + ReLU) → dropout → Linear to the genres.

    Shapes for ``size=(128, 80)``: block1 ``(32, 64, 40)``, block2 ``(64, 32, 20)``, block3
    ``(128, 16, 10)``, block4 ``(256, 8, 5)``, fc ``(256,)``.
    """

    def __init__(
        self,
        num_outputs: int = 23,
        size: Sequence[int] = (128, 80),
        widths: Sequence[int] = (32, 64, 128, 256),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)
        chans = (3, *widths)
        for i in range(4):
            self.add_module(f"block{i + 1}", _conv_block(chans[i], chans[i + 1]))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1], widths[-1]), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(widths[-1], num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.head(self.fc(F.adaptive_avg_pool2d(x, 1)))


class VGG19Features(nn.Module):
    """torchvision's ``vgg19().features`` layout (same state-dict keys ``features.<i>.*``)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------- factory
def _text_backbone(raw, root: Path, seed: int, progress: bool, weights, epochs: int) -> Backbone:
    train = raw.splits["train"]
    torch.manual_seed(seed)
    net = MaxoutMLP(d_in=train.inputs["text"].shape[1], num_outputs=train.labels.shape[1])
    if weights:
        load_weights(net, weights)
        freeze(net)
    else:
        meta = {"arch": "maxout-mlp-64-k5", "data": dataset_checksum(raw), "seed": seed, "epochs": epochs}
        pretrained(
            net,
            root / "mmimdb" / "backbones" / f"text-maxout-{weights_key(**meta)}.pt",
            lambda m: train_classifier(
                m,
                train.inputs["text"],
                train.labels,
                multilabel=True,
                epochs=epochs,
                batch_size=128,
                to_tensor=text_to_tensor,
                seed=seed,
                progress=progress,
                desc="pretrain mmimdb text",
            ),
            meta,
        )
    return Backbone("text", net, MAXOUT_LAYERS, preprocess=text_to_tensor, name="maxout-mlp")


def _image_backbone(
    raw,
    root: Path,
    seed: int,
    progress: bool,
    weights,
    epochs: int,
    image_size: Sequence[int],
    batch_size: int,
) -> Backbone:
    if weights:
        with torch.device("meta"):  # skip the random initialisation of 20 M weights
            net = VGG19Features()
        load_weights(net, weights, strict=True, assign=True)
        return Backbone("image", freeze(net), VGG19_LAYERS, preprocess=images_to_tensor, name="vgg19")
    train = raw.splits["train"]
    torch.manual_seed(seed)
    net = SmallVGG(num_outputs=train.labels.shape[1], size=image_size)
    meta = {
        "arch": "small-vgg-32-256",
        "size": list(net.size),
        "data": dataset_checksum(raw),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
    }
    pretrained(
        net,
        root / "mmimdb" / "backbones" / f"image-smallvgg-{weights_key(**meta)}.pt",
        lambda m: train_classifier(
            m,
            train.inputs["image"],
            train.labels,
            multilabel=True,
            epochs=epochs,
            batch_size=batch_size,
            to_tensor=images_to_tensor,
            seed=seed,
            progress=progress,
            desc="pretrain mmimdb image",
        ),
        meta,
    )
    return Backbone("image", net, SMALL_VGG_LAYERS, preprocess=images_to_tensor, name="small-vgg")


@register_backbones("mmimdb")
def mmimdb_backbones(
    raw,
    root,
    seed: int = 0,
    progress: bool = True,
    *,
    image_weights: str | None = None,
    text_weights: str | None = None,
    epochs: int | None = None,
    image_size: Sequence[int] = (128, 80),
    batch_size: int = 64,
) -> list[Backbone]:
    """Frozen ``image`` and ``text`` backbones for MM-IMDB, pre-training them (cached under ``root``).

    Args:
        raw: the MM-IMDB :class:`RawDataset`.
        root: cache directory; pre-trained weights go to ``root/mmimdb/backbones/``.
        image_weights: torchvision-format VGG19 state dict → :class:`VGG19Features`; default: a
            :class:`SmallVGG` trained here.
        text_weights: a :class:`MaxoutMLP` state dict; default: trained here.
        epochs: pre-training epochs for both nets (default: image 5, text 20).
        image_size: ``(H, W)`` the SmallVGG resizes posters to.
    """
    root = Path(root)
    image_weights = option(image_weights, raw, "image_weights")
    text_weights = option(text_weights, raw, "text_weights")
    epochs = option(epochs, raw, "pretrain_epochs", cast=int)
    return [
        _image_backbone(raw, root, seed, progress, image_weights, epochs or 5, image_size, batch_size),
        _text_backbone(raw, root, seed, progress, text_weights, epochs or 20),
    ]
