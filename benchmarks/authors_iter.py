"""The authors' BM-NAS hypernet: one search iteration on one device, for benchmarks/gpu_check.sh (issue 22).

    python benchmarks/authors_iter.py --authors DIR --dataset mmimdb --device cuda [--json out.json]

``DIR`` is a checkout of Somedaywilldo/BM-NAS (``git archive`` of its mirror; ``poster.pdf`` is absent
there). Nothing of theirs is copied: ``DIR`` is put on ``sys.path`` at run time and their classes are
used as they are: ``Searchable_Image_Text_Net`` / ``Searchable_Skeleton_Image_Net``, their
``LRCosineAnnealingScheduler`` and their first-order ``Architect``. ``args`` comes from running their
search script's own ``parse_args`` (read out of ``main_darts_searchable_<dataset>.py``) on
``--batchsize B`` plus any ``--C``/``--L`` given here, then ``args.parallel = False`` (their scripts
never define it; reference/authors-code-notes.md §9).

Backbones cut off: while the model is built, their backbone classes (``GP_VGG``, ``MaxOut_MLP``,
``Visual``, ``Skeleton``) are replaced by pass-throughs that hand their forward the raw maps their
reshape layers pool; the maps are random tensors of the real per-sample shapes (notes §1):

* MM-IMDB, K = 6: VGG19 relu4_1, relu4_4 ``512×32×20``, relu5_3 ``512×16×10``, pool5 ``512×8×5``;
  MaxOut text ``64``, ``128``. C = 192, L = 16, N = 2 Cells, M = 1 step, 23 labels (BCE), drpt 0.1.
* NTU, K = 8: I3D layer2 ``512×8×32×32``, layer3 ``1024×8×16×16``, layer4 ``2048×8×8×8``, pool
  ``2048``; skeleton conv5 ``128×4×4``, conv6 ``256×2×2``, flat ``1024``, fc7 ``512``. C = 128, L = 8,
  N = 2, M = 2, 60 classes (cross-entropy), drpt 0.2.

benchmarks/gpu_iter.py ``--preset mmimdb|ntu`` feeds bmnas the same K features pooled to ``(L_k, C_in)``
(what bmnas caches once), with the same C, L, N, M, classes and batch 96.

One iteration is what their ``train_searchable`` loop does per batch (notes §9), fusion only:

* weight step: ``optimizer.zero_grad()``, forward, loss, ``scheduler.step()``,
  ``scheduler.update_optimizer(optimizer)``, ``loss.backward()``, ``optimizer.step()`` with their
  ``Adam(model.central_params(), lr=eta_max, weight_decay)`` (MM-IMDB 1e-4, NTU 3e-4);
* architecture step: ``architect.step(x, y, logger)`` with ``Adam(arch_parameters(), lr 3e-4,
  betas (0.5, 0.999), weight_decay 1e-3)``.

Left out: the no-grad dev re-forward and the per-batch sklearn metrics. Both steps read one random
batch (the values do not change the work; an NTU batch of 96 raw maps is 2.8 GB). Their α, β, γ are
plain tensors that ``.to(device)`` does not move (notes §6): on a GPU they stay on the CPU, as in their
runs. Times are medians after ``--warmup`` iterations, CUDA-synchronised. Prints one markdown row in
gpu_iter.py's columns; ``--json PATH`` (``-`` for stdout) writes every figure.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import json
import math
import statistics
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

NEEDED = (
    "models/search/mmimdb_darts_searchable.py",
    "models/search/ntu_darts_searchable.py",
    "models/search/darts/architect.py",
    "models/auxiliary/scheduler.py",
)

DATASETS: dict[str, dict] = {
    "mmimdb": {
        "script": "main_darts_searchable_mmimdb.py",
        "module": "models.search.mmimdb_darts_searchable",
        "cls": "Searchable_Image_Text_Net",
        "backbones": {"models.central.mmimdb": ("GP_VGG", "MaxOut_MLP")},
        "a": [(512, 32, 20), (512, 32, 20), (512, 16, 10), (512, 8, 5)],  # image, VGG19 stages
        "b": [(64,), (128,)],  # text, MaxOut MLP o1, o3
        "train_rows": 15552,  # their MM_IMDB train length
    },
    "ntu": {
        "script": "main_darts_searchable_ntu.py",
        "module": "models.search.ntu_darts_searchable",
        "cls": "Searchable_Skeleton_Image_Net",
        "backbones": {"models.central.ntu": ("Visual", "Skeleton")},
        "a": [(512, 8, 32, 32), (1024, 8, 16, 16), (2048, 8, 8, 8), (2048,)],  # video, I3D
        "b": [(128, 4, 4), (256, 2, 2), (1024,), (512,)],  # skeleton
        "train_rows": None,  # depends on the subject split; the LR value does not change the work
    },
}

# Modules their files import that this benchmark never calls: stubbed only where not installed.
STUBBED = ("IPython", "graphviz", "torchvision", "torchvision.models", "torchvision.transforms")


class CheckoutError(Exception):
    """``--authors DIR`` is not a usable checkout of their code."""


def _stub(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so that ``import torchvision.transforms`` resolves

    def missing(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def absent(*_a, **_k):
            raise RuntimeError(f"{name}.{attr} is stubbed by authors_iter.py (not installed)")

        return absent

    mod.__getattr__ = missing
    return mod


def _install_stubs() -> list[str]:
    done = []
    for name in STUBBED:
        top = name.split(".")[0]
        if name in sys.modules or (top == name and importlib.util.find_spec(name) is not None):
            continue
        if top != name and top not in done:
            continue
        sys.modules[name] = _stub(name)
        if top != name:
            setattr(sys.modules[top], name.split(".")[1], sys.modules[name])
        done.append(name)
    return done


def check_checkout(root: Path) -> None:
    if not root.is_dir():
        raise CheckoutError(
            f"--authors {root}: no such directory; give a checkout of Somedaywilldo/BM-NAS "
            f"(how to make one: benchmarks/README.md, gpu_check.sh)"
        )
    missing = [p for p in NEEDED if not (root / p).is_file()]
    if missing:
        raise CheckoutError(
            f"--authors {root}: not a checkout of Somedaywilldo/BM-NAS ({missing[0]} is missing)"
        )


def their_args(root: Path, dataset: str, argv: list[str]) -> argparse.Namespace:
    """``parse_args()`` of their search script, run on ``argv``: the ``args`` their model reads."""
    script = root / DATASETS[dataset]["script"]
    if not script.is_file():
        raise CheckoutError(f"--authors {root}: {script.name} is missing")
    tree = ast.parse(script.read_text(), str(script))
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse_args"]
    if not found:
        raise CheckoutError(f"{script}: no parse_args() to read their settings from")
    code = compile(ast.Module([found[0]], []), str(script), "exec")
    space: dict = {"argparse": argparse}
    exec(code, space)  # their function, from their file, at run time
    saved, sys.argv = sys.argv, [script.name, *argv]
    try:
        args = space["parse_args"]()
    finally:
        sys.argv = saved
    args.parallel = False  # read by their model, defined by no parser (notes §9)
    return args


class _MapsOut(nn.Module):
    """Stands in for one of their backbones: returns the raw maps it is given, as theirs would."""

    def __init__(self, *_args, kind: str = "maps", **_kw):
        super().__init__()
        self.kind = kind

    def forward(self, maps):
        if self.kind == "skeleton":  # Skeleton returns (features, classifier); they keep features[-4:]
            return list(maps), None
        return (*maps, None)  # the last output (a classifier's) is dropped by their forward


@contextlib.contextmanager
def _cut_backbones(dataset: str) -> Iterator[None]:
    saved = []
    for modname, names in DATASETS[dataset]["backbones"].items():
        mod = importlib.import_module(modname)
        for name in names:
            kind = "skeleton" if name == "Skeleton" else "maps"
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, lambda args, _k=kind: _MapsOut(kind=_k))
    try:
        yield
    finally:
        for mod, name, orig in saved:
            setattr(mod, name, orig)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Quiet:
    def info(self, *_a, **_k) -> None:
        pass


def build(root: Path, opts: argparse.Namespace) -> dict:
    """Their model, optimisers, scheduler and Architect, and one random batch of raw maps."""
    check_checkout(root)
    argv = ["--batchsize", str(opts.batch)]
    for key in ("C", "L"):
        if getattr(opts, key) is not None:
            argv += [f"--{key}", str(getattr(opts, key))]
    args = their_args(root, opts.dataset, argv)
    sys.path.insert(0, str(root))
    stubs = _install_stubs()
    spec = DATASETS[opts.dataset]
    try:
        searchable = importlib.import_module(spec["module"])
        sc = importlib.import_module("models.auxiliary.scheduler")
        Architect = importlib.import_module("models.search.darts.architect").Architect
    except ImportError as e:
        raise CheckoutError(f"--authors {root}: importing their code failed: {e}") from e
    torch.manual_seed(args.seed)
    if opts.dataset == "mmimdb":
        criterion = nn.BCEWithLogitsLoss()
        with _cut_backbones("mmimdb"):
            model = getattr(searchable, spec["cls"])(args, criterion)
    else:
        criterion = nn.CrossEntropyLoss()
        with _cut_backbones("ntu"):
            model = getattr(searchable, spec["cls"])(args, criterion, _Quiet())
    optimizer = torch.optim.Adam(model.central_params(), lr=args.eta_max, weight_decay=args.weight_decay)
    rows = spec["train_rows"] or 1000 * args.batchsize
    nbpe = rows / args.batchsize
    scheduler = sc.LRCosineAnnealingScheduler(args.eta_max, args.eta_min, args.Ti, args.Tm, nbpe)
    arch_lr, arch_wd = args.arch_learning_rate, args.arch_weight_decay
    arch_params = model.arch_parameters()
    arch_optimizer = torch.optim.Adam(arch_params, lr=arch_lr, betas=(0.5, 0.999), weight_decay=arch_wd)
    model.to(opts.device)
    architect = Architect(model, args, criterion, arch_optimizer)
    g = torch.Generator().manual_seed(0)
    B, dev = args.batchsize, opts.device
    a = tuple(torch.randn(B, *s, generator=g).to(dev) for s in spec["a"])
    b = tuple(torch.randn(B, *s, generator=g).to(dev) for s in spec["b"])
    if opts.dataset == "mmimdb":
        x = (b, a)  # their forward unpacks (text, image)
        y = (torch.rand(B, args.num_outputs, generator=g) < 0.15).float().to(dev)
    else:
        x = (a, b)  # (image, skeleton)
        y = torch.randint(0, args.num_outputs, (B,), generator=g).to(dev)
    model.train()  # their search loop keeps train mode in both phases
    in_opt = {id(p) for grp in optimizer.param_groups for p in grp["params"]}
    return {
        "args": args,
        "model": model,
        "criterion": criterion,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "architect": architect,
        "x": x,
        "y": y,
        "stubs": stubs,
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params_weight_optimizer": sum(p.numel() for p in model.parameters() if id(p) in in_opt),
        "arch_numbers": sum(t.numel() for t in model.arch_parameters()),
    }


def weight_step(s: dict) -> None:
    """Their train-phase batch (train_searchable, status 'search'), metrics left out."""
    s["optimizer"].zero_grad()
    out = s["model"](s["x"])
    loss = s["criterion"](out, s["y"])
    s["scheduler"].step()
    s["scheduler"].update_optimizer(s["optimizer"])
    loss.backward()
    s["optimizer"].step()


def arch_step(s: dict) -> None:
    """Their dev-phase architecture step: first-order ``Architect.step``."""
    s["architect"].step(s["x"], s["y"], _Quiet())


def measure(s: dict, device: str, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        weight_step(s)
        arch_step(s)
    _sync(device)
    w, a = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        weight_step(s)
        _sync(device)
        t1 = time.perf_counter()
        arch_step(s)
        _sync(device)
        w.append(t1 - t0)
        a.append(time.perf_counter() - t1)
    it = [x + y for x, y in zip(w, a, strict=True)]
    kernels = busy = float("nan")
    if device.startswith("cuda"):
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            t0 = time.perf_counter()
            weight_step(s)
            arch_step(s)
            _sync(device)
            wall = time.perf_counter() - t0
        ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        kernels, busy = float(len(ev)), sum(e.device_time for e in ev) / 1e6 / wall
    return {
        "ms": statistics.median(it) * 1e3,
        "min_ms": min(it) * 1e3,
        "max_ms": max(it) * 1e3,
        "weight_ms": statistics.median(w) * 1e3,
        "arch_ms": statistics.median(a) * 1e3,
        "kernels": kernels,
        "busy": busy,
    }


def row(r: dict) -> str:
    sizes = f"C={r['C']} L={r['L']} b={r['batch']} threads={r['threads']}"
    what = f"authors' hypernet iteration ({r['dataset']}) {sizes}"
    k = "" if math.isnan(r["kernels"]) else f"{r['kernels']:.0f}"
    busy = "" if math.isnan(r["busy"]) else f"{r['busy']:.0%}"
    return f"| {what} | {r['device']} | fp32 | off (eager) | {r['ms']:.2f} ms | {k} | {busy} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors", required=True, type=Path, help="a checkout of Somedaywilldo/BM-NAS")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="mmimdb")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--C", type=int, default=None, help="their --C (default: their script's, Table 8)")
    ap.add_argument("--L", type=int, default=None, help="their --L (MM-IMDB: a perfect square)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write every figure as JSON to this file ('-': stdout)")
    opts = ap.parse_args(argv)
    try:  # the checkout first: a wrong path is the likelier mistake than a missing GPU
        check_checkout(opts.authors.resolve())
    except CheckoutError as e:
        print(f"authors_iter: {e}", file=sys.stderr)
        return 2
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        print("authors_iter: --device cuda but torch sees no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    try:
        s = build(opts.authors.resolve(), opts)
    except CheckoutError as e:
        print(f"authors_iter: {e}", file=sys.stderr)
        return 2
    args = s["args"]
    r = {
        "what": "authors",
        "dataset": opts.dataset,
        "device": opts.device,
        "batch": args.batchsize,
        "C": args.C,
        "L": args.L,
        "N": args.steps,
        "M": args.node_steps,
        "K": len(DATASETS[opts.dataset]["a"]) + len(DATASETS[opts.dataset]["b"]),
        "classes": args.num_outputs,
        "iters": opts.iters,
        "warmup": opts.warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "authors_dir": str(opts.authors),
        "stubbed_modules": s["stubs"],
        "params_trainable": s["params_trainable"],
        "params_weight_optimizer": s["params_weight_optimizer"],
        "arch_numbers": s["arch_numbers"],
        **measure(s, opts.device, max(1, opts.iters), max(0, opts.warmup)),
    }
    print(row(r), flush=True)
    r = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}  # strict JSON
    if opts.json == "-":
        print(json.dumps(r))
    elif opts.json:
        Path(opts.json).write_text(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
