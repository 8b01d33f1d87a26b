"""The networks: teachers (deep MLP, 1-D CNN, small Transformer encoder, autoencoders) and the
students that ship (plain MLPs, so structured pruning can remove whole neurons).

Every module maps a batch of model inputs (what :func:`agent.pipeline.features.window_to_input`
returns for its feature spec) to raw outputs: logits for a classifier, a normalised value for
a regressor, a reconstruction for an autoencoder. :mod:`export.onnx_tools` wraps the student
into the served graph (softmax, de-normalisation, reconstruction error).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "AutoEncoder", "CNN1d", "TinyTransformer", "build_net"]


class MLP(nn.Module):
    """``n_in → hidden… → n_out`` with ReLU; ``layers`` is the list structured pruning edits."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [n_in, *hidden, n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = float(dropout)

    @property
    def hidden(self) -> list[int]:
        return [layer.out_features for layer in self.layers[:-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
            if self.dropout and self.training:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return self.layers[-1](x)


class AutoEncoder(nn.Module):
    """A symmetric MLP autoencoder ``n → hidden… → bottleneck → …hidden → n`` (one MLP, so
    pruning treats it like any other student)."""

    def __init__(self, n_in: int, hidden: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        self.mlp = MLP(n_in, [*hidden, bottleneck, *reversed(hidden)], n_in)

    @property
    def layers(self) -> nn.ModuleList:
        return self.mlp.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class CNN1d(nn.Module):
    """A 1-D CNN over a window ``[B, T, R]``: strided convolutions along time, global mean and
    max pooling, a linear head."""

    def __init__(self, n_roles: int, n_out: int, channels: int = 64, kernel: int = 5) -> None:
        super().__init__()
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(n_roles, channels, kernel, stride=2, padding=pad),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel, stride=2, padding=pad),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel, stride=1, padding=pad),
            nn.ReLU(),
        )
        self.head = nn.Linear(2 * channels, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.transpose(1, 2))
        return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class TinyTransformer(nn.Module):
    """A small Transformer encoder over a window ``[B, T, R]`` (time pooled by ``pool`` first)."""

    def __init__(
        self,
        n_roles: int,
        length: int,
        n_out: int,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        pool: int = 4,
    ) -> None:
        super().__init__()
        self.pool = pool
        steps = max(1, length // pool)
        self.embed = nn.Linear(n_roles, d_model)
        self.pos = nn.Parameter(torch.zeros(1, steps, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _t, r = x.shape
        steps = self.pos.shape[1]
        x = x[:, : steps * self.pool].reshape(b, steps, self.pool, r).mean(dim=2)
        h = self.encoder(self.embed(x) + self.pos)
        return self.head(h.mean(dim=1))


def build_net(
    arch: str,
    *,
    n_in: int,
    n_out: int,
    length: int,
    n_roles: int,
    hidden: Sequence[int] = (),
    channels: int = 64,
    bottleneck: int = 8,
    d_model: int = 32,
    heads: int = 4,
    layers: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """A network by name: ``mlp``, ``cnn``, ``transformer`` (sequence input) or ``autoencoder``."""
    if arch == "mlp":
        return MLP(n_in, hidden, n_out, dropout)
    if arch == "autoencoder":
        return AutoEncoder(n_in, hidden, bottleneck)
    if arch == "cnn":
        return CNN1d(n_roles, n_out, channels)
    if arch == "transformer":
        return TinyTransformer(n_roles, length, n_out, d_model, heads, layers)
    raise ValueError(f"unknown architecture {arch!r} (mlp, cnn, transformer, autoencoder)")
