"""Training: teachers, knowledge distillation into students, structured pruning, metrics.

Three kinds of objective (``kind``):

Rows without a hard target (label ``-1``, a NaN regression target: the unlabelled windows of a
transfer set) take part only through the teacher's term.

* ``classifier``: cross-entropy on hard labels (class-weighted, so rare faults count), plus
  with a teacher the distillation term ``T^2 KL(softmax(t/T) || softmax(s/T))`` (Hinton et al.):
  ``loss = alpha * CE + (1 - alpha) * T^2 * KL``.
* ``regression``: MSE on the normalised target, plus with a teacher ``MSE(s, teacher)``.
* ``autoencoder``: MSE of the reconstruction against the input, plus with a teacher
  ``MSE(s, teacher's reconstruction)``.

Training is deterministic for a seed (torch's generator for shuffling and initialisation,
deterministic algorithms, a fixed thread count set by the caller) and keeps the weights of
the epoch with the best validation loss. :func:`prune_mlp` removes whole hidden neurons
(rows of one weight matrix and the matching columns of the next) by their importance on
data, so the pruned network is physically smaller and faster; it is then fine-tuned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from export.nets import MLP, AutoEncoder
from export.progress import Progress

__all__ = [
    "FitConfig",
    "auc",
    "balanced_accuracy",
    "confusion",
    "fit",
    "keep_units",
    "predict",
    "prune_mlp",
    "seed_everything",
]


def seed_everything(seed: int, threads: int = 1) -> None:
    """Seed torch and numpy, and fix torch's CPU threads (results depend on the thread count)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 20
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 6
    seed: int = 0
    alpha: float = 0.5  # weight of the hard-label term when distilling
    temperature: float = 4.0
    progress: bool = True
    desc: str = "train"


def predict(net: nn.Module, x: npt.NDArray[np.float32], batch: int = 4096) -> npt.NDArray[np.float32]:
    """Raw outputs of ``net`` in eval mode, in batches."""
    net.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(net(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy())
    if not outs:
        return np.empty((0,), np.float32)
    return np.concatenate(outs).astype(np.float32)


def _loss(
    kind: str,
    out: torch.Tensor,
    y: torch.Tensor | None,
    xb: torch.Tensor,
    teacher: torch.Tensor | None,
    cfg: FitConfig,
    weight: torch.Tensor | None,
) -> torch.Tensor:
    if kind == "classifier":
        assert y is not None
        lab = y >= 0  # -1: an unlabelled window of the transfer set (only the teacher's term)
        hard = (
            nn.functional.cross_entropy(out[lab], y[lab], weight=weight)
            if bool(lab.any())
            else out.sum() * 0.0
        )
        if teacher is None:
            return hard
        t = cfg.temperature
        soft = nn.functional.kl_div(
            nn.functional.log_softmax(out / t, dim=1),
            nn.functional.softmax(teacher / t, dim=1),
            reduction="batchmean",
        )
        return cfg.alpha * hard + (1 - cfg.alpha) * t * t * soft
    if kind == "regression":
        assert y is not None
        lab = torch.isfinite(y)  # NaN: an unlabelled window of the transfer set
        hard = nn.functional.mse_loss(out.reshape(-1)[lab], y[lab]) if bool(lab.any()) else out.sum() * 0.0
        if teacher is None:
            return hard
        return cfg.alpha * hard + (1 - cfg.alpha) * nn.functional.mse_loss(
            out.reshape(-1), teacher.reshape(-1)
        )
    if kind == "autoencoder":
        target = xb.reshape(xb.shape[0], -1)
        hard = nn.functional.mse_loss(out, target)
        if teacher is None:
            return hard
        return cfg.alpha * hard + (1 - cfg.alpha) * nn.functional.mse_loss(out, teacher)
    raise ValueError(f"unknown objective {kind!r}")


def fit(
    net: nn.Module,
    kind: str,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.generic] | None,
    x_val: npt.NDArray[np.float32],
    y_val: npt.NDArray[np.generic] | None,
    cfg: FitConfig,
    *,
    teacher: npt.NDArray[np.float32] | None = None,
    teacher_val: npt.NDArray[np.float32] | None = None,
    class_weight: npt.NDArray[np.float32] | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``net`` in place and return it with the best validation weights, and the history.

    ``teacher``/``teacher_val``: the teacher's raw outputs for the same rows (distillation).
    Validation loss is the same objective (with the teacher term when distilling).
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = None if y is None else torch.from_numpy(np.ascontiguousarray(y))
    tt = None if teacher is None else torch.from_numpy(np.ascontiguousarray(teacher))
    xv = torch.from_numpy(np.ascontiguousarray(x_val))
    yv = None if y_val is None else torch.from_numpy(np.ascontiguousarray(y_val))
    tv = None if teacher_val is None else torch.from_numpy(np.ascontiguousarray(teacher_val))
    weight = None if class_weight is None else torch.from_numpy(class_weight.astype(np.float32))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    best = math.inf
    best_state = copy.deepcopy(net.state_dict())
    history: list[dict[str, float]] = []
    stale = 0
    bar = Progress(cfg.epochs, cfg.desc, enabled=cfg.progress)
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(perm), cfg.batch):
            idx = perm[i : i + cfg.batch]
            xb = xt[idx]
            out = net(xb)
            loss = _loss(
                kind, out, None if yt is None else yt[idx], xb, None if tt is None else tt[idx], cfg, weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        net.eval()
        with torch.no_grad():
            vl = 0.0
            for i in range(0, len(xv), 8192):
                sl = slice(i, i + 8192)
                vb = xv[sl]
                vl += float(
                    _loss(
                        kind,
                        net(vb),
                        None if yv is None else yv[sl],
                        vb,
                        None if tv is None else tv[sl],
                        cfg,
                        weight,
                    )
                ) * len(vb)
            vl /= max(len(xv), 1)
        history.append({"epoch": float(epoch + 1), "train_loss": total / max(len(xt), 1), "val_loss": vl})
        bar.update(loss=total / max(len(xt), 1), val=vl)
        if vl < best - 1e-7:
            best = vl
            best_state = copy.deepcopy(net.state_dict())
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    bar.close()
    net.load_state_dict(best_state)
    net.eval()
    return net, history


# --------------------------------------------------------------------------- pruning


def _mlp_of(net: nn.Module) -> MLP:
    if isinstance(net, MLP):
        return net
    if isinstance(net, AutoEncoder):
        return net.mlp
    raise TypeError(f"structured pruning needs an MLP student, got {type(net).__name__}")


def keep_units(importance: torch.Tensor, keep: float, min_units: int = 4) -> torch.Tensor:
    """The sorted indices of the ``ceil(keep * width)`` most important units (at least
    ``min_units``, at most all) of one layer: the selection of every structured pruning here
    (:func:`prune_mlp`'s neurons, the sequence model's channels in :mod:`export.sequence`).
    ``importance``: per unit, mean |activation| on data times the norm of its outgoing weights."""
    width = int(importance.shape[0])
    n = max(min(width, min_units), math.ceil(keep * width))
    order = torch.argsort(importance, descending=True, stable=True)[:n]
    return torch.sort(order).values


def prune_mlp(
    net: nn.Module,
    keep: float,
    x: npt.NDArray[np.float32],
    *,
    min_neurons: int = 4,
    protect: Sequence[int] = (),
) -> nn.Module:
    """A copy of ``net`` (an MLP or MLP autoencoder) with the least important hidden neurons
    removed: each hidden layer keeps ``ceil(keep * width)`` neurons (at least ``min_neurons``;
    layers whose index is in ``protect`` keep all).

    Importance of neuron j in hidden layer i: mean |activation| on ``x`` times the L2 norm of
    its outgoing weights (what it actually contributes downstream).
    """
    if not 0 < keep <= 1:
        raise ValueError("keep must be in (0, 1]")
    net = copy.deepcopy(net)
    mlp = _mlp_of(net)
    layers = list(mlp.layers)
    with torch.no_grad():
        h = torch.from_numpy(np.ascontiguousarray(x)).reshape(len(x), -1)
        acts = []
        for layer in layers[:-1]:
            h = torch.relu(layer(h))
            acts.append(h.abs().mean(dim=0))
        keep_idx: list[torch.Tensor] = []
        for i, a in enumerate(acts):
            importance = a * layers[i + 1].weight.norm(dim=0)
            keep_idx.append(keep_units(importance, 1.0 if i in protect else keep, min_neurons))
        new_layers = []
        prev: torch.Tensor | None = None
        for i, layer in enumerate(layers):
            w, b = layer.weight.data, layer.bias.data
            if prev is not None:
                w = w[:, prev]
            if i < len(keep_idx):
                w, b = w[keep_idx[i]], b[keep_idx[i]]
                prev = keep_idx[i]
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(b)
            new_layers.append(lin)
        mlp.layers = nn.ModuleList(new_layers)
    return net


def n_params(net: nn.Module) -> int:
    return int(sum(p.numel() for p in net.parameters()))


# --------------------------------------------------------------------------- metrics


def confusion(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n: int) -> npt.NDArray[np.int64]:
    """``[n, n]`` counts, rows true class, columns predicted."""
    m = np.zeros((n, n), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def balanced_accuracy(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, n: int) -> float:
    """Mean recall over the classes present in ``y_true``."""
    m = confusion(y_true, y_pred, n)
    support = m.sum(axis=1)
    present = support > 0
    if not present.any():
        return math.nan
    return float(np.mean(np.diag(m)[present] / support[present]))


def auc(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """ROC AUC (Mann-Whitney with tie correction); NaN without both classes."""
    s = np.asarray(scores, np.float64)
    p = np.asarray(positive, bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: npt.ArrayLike, positive: npt.ArrayLike, points: int = 200) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) pairs at ``points`` score quantiles."""
    s = np.asarray(scores, np.float64)
    p = np.asarray(positive, bool)
    if not p.any() or p.all():
        return []
    th = np.unique(np.quantile(s, np.linspace(0, 1, points)))[::-1]
    out = [(0.0, 0.0)]
    for t in th:
        pred = s >= t
        out.append((float(np.mean(pred[~p])), float(np.mean(pred[p]))))
    out.append((1.0, 1.0))
    return out
