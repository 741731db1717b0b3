"""Evaluation stage (SPEC §8): train a found network from scratch on train + val, test once.

The reported figures are the test metrics of the final epoch: no epoch or model is ever selected
on the test split. The state is checkpointed each epoch, so a killed run resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .config import Config
from .data import FeatureData, merge_splits
from .found import FoundNet
from .genotype import Genotype
from .loop import batch_indices, cosine_restarts, evaluate, loss_fn
from .runs import RunDir


@dataclass
class TrainResult:
    """Test metrics of the last epoch, parameter counts, wall time and the trained network."""

    test: dict
    params: dict
    seconds: float
    history: list[dict]
    model: FoundNet


def train_found(
    genotype: Genotype,
    data: FeatureData,
    cfg: Config,
    run: RunDir | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    stage: str = "train",
    desc: str = "train",
) -> TrainResult:
    """Train ``FoundNet(genotype)`` on train + val for ``cfg.train.epochs``; evaluate on test.

    Args:
        run: run directory for the per-epoch checkpoint (resumed if present) and history.
        stage: checkpoint name, so several networks can be trained in one run directory.
        stop_after: end this call after that many epochs in total (to test resumption).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t = cfg.train
    torch.manual_seed(cfg.seed)
    model = FoundNet(genotype, data.task.num_outputs, dropout=cfg.model.dropout)
    fit = merge_splits(data["train"], data["val"])
    n_batches = len(batch_indices(len(fit), t.batch_size, None))
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = cosine_restarts(opt, n_batches, t.restart_epochs, t.restart_mult, t.lr_min)
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    state = {"epoch": 0, "history": [], "seconds": 0.0}
    ckpt = run.load_checkpoint(stage, cfg) if run is not None else None
    if ckpt is not None and ckpt.get("genotype") != genotype.to_dict():
        ckpt = None  # a checkpoint of another architecture: start over
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        sched.load_state_dict(ckpt["sched"])
        shuffle.set_state(ckpt["shuffle"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
    last = t.epochs if stop_after is None else min(t.epochs, stop_after)
    bar = tqdm(range(state["epoch"] + 1, last + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        for idx in batch_indices(len(fit), t.batch_size, shuffle):
            feats, y = fit.batch(idx)
            loss = loss_fn(data.task, model(feats), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        seconds = time.perf_counter() - t0
        state["seconds"] += seconds
        state["history"].append(
            {"epoch": epoch, "train_loss": total / len(fit), "lr": sched.get_last_lr()[0], "seconds": seconds}
        )
        state["epoch"] = epoch
        bar.set_postfix(loss=f"{total / len(fit):.4f}")
        if run is not None:
            run.save_checkpoint(
                stage,
                cfg,
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "shuffle": shuffle.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "state": state,
                    "genotype": genotype.to_dict(),
                },
            )
            run.write_jsonl(f"{stage}_history.jsonl", state["history"])
    test = evaluate(model, data["test"], data.task, t.eval_batch_size, cfg.data.threshold)
    return TrainResult(test, model.param_counts(), state["seconds"], state["history"], model)
