"""The networks: teachers (deep MLP, 1-D CNN, temporal convolutional network, small Transformer
encoder, autoencoders, and ensembles of any of them) and the
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

__all__ = ["LOG_EPS", "MLP", "TCN", "AutoEncoder", "CNN1d", "Ensemble", "TinyTransformer", "build_net"]


#: Added before the log of a spread: a window spread of 0 (a frozen sensor) is log(1e-3), far
#: from a sensor's noise of a few hundredths of its operating spread (log about -3.5).
LOG_EPS = 1e-3


class MLP(nn.Module):
    """``n_in → hidden… → n_out`` with ReLU; ``layers`` is the list structured pruning edits.

    ``log_inputs``: input features (non-negative spreads, e.g. the window std of every role)
    taken as ``log(LOG_EPS + x)`` first, inside the graph: standardised by the role's whole
    operating range, a sensor's noise is a few hundredths and a frozen sensor 0, a difference
    a linear layer barely sees and the log makes large.

    ``squash``: every other input taken as ``sign(x) log(1 + |x|)`` first (about the identity
    near 0, a log for large values): a fault drives some statistics to hundreds of sigmas, and squashed inputs
    keep every layer's activations within a range 8-bit activations can hold (INT8 W8A8).
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        n_out: int,
        dropout: float = 0.0,
        log_inputs: Sequence[int] = (),
        squash: bool = False,
    ) -> None:
        super().__init__()
        sizes = [n_in, *hidden, n_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = float(dropout)
        self.log_inputs = tuple(int(i) for i in log_inputs)
        self.squash = bool(squash)
        mask = torch.zeros(n_in, dtype=torch.bool)
        mask[list(self.log_inputs)] = True
        self.register_buffer("log_mask", mask, persistent=False)

    @property
    def hidden(self) -> list[int]:
        return [layer.out_features for layer in self.layers[:-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        if self.log_inputs or self.squash:
            # sign(x) log(1 + |x|): asinh's shape in ops every ONNX opset has (no Asinh export)
            other = torch.sign(x) * torch.log1p(x.abs()) if self.squash else x
            if self.log_inputs:
                other = torch.where(self.log_mask, torch.log(LOG_EPS + torch.relu(x)), other)
            x = other
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


class _Residual(nn.Module):
    """Two dilated convolutions with a skip connection (same length in and out)."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        self.a = nn.Conv1d(channels, channels, kernel, padding=pad, dilation=dilation)
        self.b = nn.Conv1d(channels, channels, kernel, padding=pad, dilation=dilation)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h + self.b(torch.relu(self.a(h))))


class TCN(nn.Module):
    """A temporal convolutional network over a window ``[B, T, R]``: every role, its first
    difference and the log of its size (a frozen sensor has a zero difference, a spike a large
    one: what window statistics average away), residual blocks with dilations 1, 2, 4, 8 (a receptive field
    of the whole 60-sample window), then mean, max, standard deviation and last step pooled
    over time and an MLP head."""

    def __init__(
        self, n_roles: int, n_out: int, channels: int = 48, kernel: int = 3, blocks: int = 4
    ) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3 * n_roles, channels, 1)
        self.blocks = nn.Sequential(*(_Residual(channels, kernel, 2**i) for i in range(blocks)))
        self.head = nn.Sequential(nn.Linear(4 * channels, channels), nn.ReLU(), nn.Linear(channels, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)
        inp = torch.cat([x, d, torch.log(LOG_EPS + d.abs())], dim=2)
        h = self.blocks(torch.relu(self.stem(inp.transpose(1, 2))))
        pooled = [h.mean(dim=2), h.amax(dim=2), h.std(dim=2), h[:, :, -1]]
        return self.head(torch.cat(pooled, dim=1))


class Ensemble(nn.Module):
    """The mean of its members' raw outputs (logits, normalised values or reconstructions):
    members trained from different seeds make a steadier teacher than any one of them."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)


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
    log_inputs: Sequence[int] = (),
    squash: bool = False,
) -> nn.Module:
    """A network by name: ``mlp``, ``cnn``, ``tcn``, ``transformer`` (sequence input) or
    ``autoencoder``."""
    if arch == "mlp":
        return MLP(n_in, hidden, n_out, dropout, log_inputs, squash)
    if arch == "autoencoder":
        return AutoEncoder(n_in, hidden, bottleneck)
    if arch == "cnn":
        return CNN1d(n_roles, n_out, channels)
    if arch == "tcn":
        return TCN(n_roles, n_out, channels)
    if arch == "transformer":
        return TinyTransformer(n_roles, length, n_out, d_model, heads, layers)
    raise ValueError(f"unknown architecture {arch!r} (mlp, cnn, tcn, transformer, autoencoder)")
