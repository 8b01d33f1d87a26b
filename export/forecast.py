"""Demand forecast: recordings → hourly series → a small model → a signed ONNX bundle.

``edge-export forecast --data FILES [--test FILES] --config CFG --out DIR``

1. Every data file (a recording's wide CSV, or a historian's long CSV) becomes hourly means of
   the demand column and, when configured, the temperature column (hours with less than half
   their samples are gaps).
2. Training rows: every hour i whose window ``[i-L+1, i]`` and targets ``[i+1, i+H]`` are whole;
   the raw window comes from :func:`agent.pipeline.forecast.forecast_window` and the input from
   :func:`agent.pipeline.features.window_to_input`: the agent's own feature path.
3. Two candidates: a ridge regression (closed form) and a small MLP with a linear skip (torch),
   each choosing on the last ``validation_fraction`` of the training rows (by time); the one
   with the lower validation MAE ships. Both are reported.
4. Test: the ``--test`` files (other seeds, other stations' days), or else the last
   ``test_fraction`` of every data file (unseen days). The error (MAE, RMSE, MAPE over every
   horizon hour) is reported against the seasonal-naive forecasts: the same hour last week and
   the same hour yesterday.
5. The bundle: ``model.onnx`` (one file), ``manifest.json`` (task ``forecast``: the roles with
   their normalisation, the hourly window, output ``demand [batch, H]`` in m³/h),
   ``report.json`` / ``report.md``; signed when ``key`` is set.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from agent.configyaml import compose, line_for, problem, read_text
from agent.errors import ConfigError
from agent.modelstore.manifest import (
    SCHEMA_VERSION,
    FeatureSpec,
    InputRole,
    Manifest,
    Normalisation,
    OutputSpec,
    TensorSpec,
    Variant,
    WindowSpec,
)
from agent.pipeline.features import window_to_input
from agent.pipeline.forecast import CALENDAR_ROLES, forecast_window
from export.onnx_tools import cpu_features, run_onnx, to_onnx
from export.tables import read_table

__all__ = ["ForecastConfig", "HourlySeries", "build_forecast", "load_forecast_config", "read_hourly"]

FloatArray = npt.NDArray[np.float64]


class ForecastConfig(BaseModel):
    """``edge-export forecast --config``: columns, calendar, shape and training settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._\-]*$")] = "demand-forecast"
    version: str = "1"
    demand_column: str = "Station.OutletFlow"
    temperature_column: str | None = "Station.AmbientTemp"
    holidays: list[date] = []
    timezone: str = "UTC"
    history_h: Annotated[int, Field(ge=24, le=24 * 28)] = 168
    horizon_h: Annotated[int, Field(ge=1, le=72)] = 24
    hidden: Annotated[int, Field(ge=4, le=512)] = 32
    epochs: Annotated[int, Field(ge=1, le=5000)] = 150
    ridge: Annotated[float, Field(gt=0)] = 1.0
    validation_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.15
    test_fraction: Annotated[float, Field(ge=0, lt=0.9)] = 0.2
    seed: int = 0
    key: Path | None = None
    demand_range: tuple[float, float] = (0.0, 5000.0)
    temperature_range: tuple[float, float] = (-50.0, 60.0)


def load_forecast_config(path: str | Path) -> ForecastConfig:
    """Read and validate the YAML; ValueError with one ``file:line field: message`` per problem."""
    source = str(path)
    try:
        data, lines = compose(read_text(path), source)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    try:
        return ForecastConfig.model_validate(data or {})
    except ValidationError as exc:
        msgs = [
            problem(source, line_for(tuple(e["loc"]), lines), tuple(e["loc"]), e["msg"]) for e in exc.errors()
        ]
        raise ValueError("\n".join(msgs)) from None


class HourlySeries(BaseModel):
    """Hourly means of one recording: each hour's start (UTC), demand and temperature (NaN: gap)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    source: str
    starts: list[datetime]
    demand: Any  # FloatArray [N]
    temperature: Any  # FloatArray [N] (NaN without a temperature column)


def _hourly(times: FloatArray, values: FloatArray, h0: float, n: int) -> tuple[FloatArray, FloatArray]:
    idx = np.floor((times - h0) / 3600.0).astype(np.int64)
    ok = np.isfinite(values) & (idx >= 0) & (idx < n)
    s = np.bincount(idx[ok], weights=values[ok], minlength=n)[:n]
    c = np.bincount(idx[ok], minlength=n)[:n].astype(np.float64)
    allc = np.bincount(idx[(idx >= 0) & (idx < n)], minlength=n)[:n].astype(np.float64)
    return s, np.where(c >= np.maximum(allc / 2, 1), c, 0.0)


def read_hourly(path: str | Path, demand_column: str, temperature_column: str | None) -> HourlySeries:
    """A wide or long CSV → :class:`HourlySeries` (ValueError naming the file and the column)."""
    p = Path(path)
    cols = [demand_column] + ([temperature_column] if temperature_column else [])
    series: dict[str, tuple[FloatArray, FloatArray]]
    # the export chain's one reader: wide or long CSV (gz too) or an agent recording directory
    table = read_table(p, columns=cols)
    series = {c: table.numeric(c) for c in cols}
    t_all = series[demand_column][0]
    if len(t_all) == 0:
        raise ValueError(f"{p}: no rows")
    h0 = math.floor(float(t_all.min()) / 3600.0) * 3600.0
    n = math.floor((float(t_all.max()) - h0) / 3600.0)  # complete hours only
    if n < 1:
        raise ValueError(f"{p}: less than one complete hour of data")
    out: dict[str, FloatArray] = {}
    for c in cols:
        s, cnt = _hourly(*series[c], h0, n)
        out[c] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    starts = [datetime.fromtimestamp(h0, UTC) + timedelta(hours=i) for i in range(n)]
    temp = out[temperature_column] if temperature_column else np.full(n, np.nan)
    return HourlySeries(source=str(p), starts=starts, demand=out[demand_column], temperature=temp)


# --------------------------------------------------------------------------- rows


class _Rows:
    """Raw windows [N, L, R], targets [N, H] and the seasonal-naive forecasts of each row."""

    def __init__(
        self,
        roles: Sequence[str],
        cfg: ForecastConfig,
        series: Sequence[HourlySeries],
        part: str,
        fraction: float,
    ) -> None:
        tz = ZoneInfo(cfg.timezone)
        hol = frozenset(cfg.holidays)
        L, H = cfg.history_h, cfg.horizon_h
        xs: list[FloatArray] = []
        ys: list[FloatArray] = []
        week: list[FloatArray] = []
        day: list[FloatArray] = []
        for s in series:
            d = np.asarray(s.demand, dtype=np.float64)
            t = np.asarray(s.temperature, dtype=np.float64)
            use_t = "temperature" in roles
            raw = forecast_window(roles, d, t if use_t else None, s.starts, hol, tz)
            finite = np.isfinite(raw).all(axis=1) & np.isfinite(d)
            n = len(d)
            cut = round(n * (1 - fraction))
            lo, hi = {"all": (0, n), "head": (0, cut), "tail": (max(0, cut - L), n)}[part]
            bad = np.concatenate([[0], np.cumsum(~finite)])
            for i in range(lo + L - 1, hi - H):
                if bad[i + H + 1] - bad[i - L + 1]:
                    continue
                xs.append(raw[i - L + 1 : i + 1])
                ys.append(d[i + 1 : i + 1 + H])
                k = np.arange(i + 1, i + 1 + H)
                week.append(d[k - 168] if L >= 168 else np.full(H, np.nan))
                day.append(d[i + 1 - 24 + (np.arange(H) % 24)])
        if not xs:
            raise ValueError(f"no whole {L} h window with its {H} h ahead in the {part} data")
        self.x = np.stack(xs)
        self.y = np.stack(ys)
        self.week = np.stack(week)
        self.day = np.stack(day)


def _errors(pred: FloatArray, y: FloatArray) -> dict[str, float]:
    e = pred - y
    return {
        "mae_m3h": float(np.abs(e).mean()),
        "rmse_m3h": float(np.sqrt((e * e).mean())),
        "mape_pct": float(100 * (np.abs(e) / np.maximum(np.abs(y), 1e-6)).mean()),
    }


class _Graph(nn.Module):
    """Normalised features → demand (m³/h): linear skip plus an MLP, then de-normalised."""

    def __init__(self, n_in: int, horizon: int, hidden: int, mean: float, std: float) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, horizon)
        self.mlp = (
            nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, horizon)) if hidden else None
        )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        if self.mlp is not None:
            z = z + self.mlp(x)
        return z * self.std + self.mean


def _ridge(x: FloatArray, y: FloatArray, lam: float) -> tuple[FloatArray, FloatArray]:
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + lam * len(x) * 1e-3 * np.eye(x.shape[1]), xc.T @ yc)
    return w, ym - xm @ w


def _train_mlp(
    g: _Graph, x: FloatArray, y: FloatArray, xv: FloatArray, yv: FloatArray, cfg: ForecastConfig
) -> float:
    torch.manual_seed(cfg.seed)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    xvt, yvt = torch.from_numpy(xv.astype(np.float32)), torch.from_numpy(yv.astype(np.float32))
    opt = torch.optim.Adam(g.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state = math.inf, {k: v.clone() for k, v in g.state_dict().items()}
    for _ in range(cfg.epochs):
        g.train()
        for idx in torch.randperm(len(xt), generator=gen).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.smooth_l1_loss(g(xt[idx]), yt[idx], beta=5.0)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        g.eval()
        with torch.no_grad():
            v = float((g(xvt) - yvt).abs().mean())
        if v < best:
            best, best_state = v, {k: t.clone() for k, t in g.state_dict().items()}
    g.load_state_dict(best_state)
    return best


def build_forecast(
    cfg: ForecastConfig, data: Sequence[str | Path], out: str | Path, *, test: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """Train, compare, export and (with ``cfg.key``) sign; returns the report (also written)."""
    torch.set_num_threads(1)
    train_s = [read_hourly(p, cfg.demand_column, cfg.temperature_column) for p in data]
    test_s = [read_hourly(p, cfg.demand_column, cfg.temperature_column) for p in test]
    roles = ["demand"] + (["temperature"] if cfg.temperature_column else []) + list(CALENDAR_ROLES)
    frac = cfg.test_fraction if not test_s else 0.0
    tr = _Rows(roles, cfg, train_s, "head" if frac else "all", frac)
    te = _Rows(roles, cfg, test_s, "all", 0.0) if test_s else _Rows(roles, cfg, train_s, "tail", frac)
    # normalisation from the training windows; calendar roles are already in [-1, 1]
    inputs: list[InputRole] = []
    measured = {"demand": ("m3/h", cfg.demand_range), "temperature": ("°C", cfg.temperature_range)}
    for j, r in enumerate(roles):
        if r not in measured:
            inputs.append(InputRole(role=r, unit="1", range=(-1.0, 1.0)))
            continue
        col = tr.x[:, :, j]
        unit, rng = measured[r]
        norm = Normalisation(kind="standard", mean=float(col.mean()), std=float(col.std()) or 1.0)
        inputs.append(InputRole(role=r, unit=unit, range=rng, normalisation=norm))
    L, H = cfg.history_h, cfg.horizon_h
    contract = Manifest.model_construct(inputs=tuple(inputs), features=FeatureSpec(kind="flatten"))
    x_tr = window_to_input(tr.x, contract).astype(np.float64)
    x_te = window_to_input(te.x, contract).astype(np.float64)
    dmean = float(inputs[0].normalisation.mean or 0.0)
    dstd = float(inputs[0].normalisation.std or 1.0)
    y_tr = (tr.y - dmean) / dstd
    nv = max(1, int(len(x_tr) * cfg.validation_fraction))
    xa, ya, xv, yv = x_tr[:-nv], y_tr[:-nv], x_tr[-nv:], tr.y[-nv:]
    # ridge
    w, b = _ridge(xa, ya, cfg.ridge)
    lin = _Graph(x_tr.shape[1], H, 0, dmean, dstd)
    with torch.no_grad():
        lin.linear.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
        lin.linear.bias.copy_(torch.from_numpy(b.astype(np.float32)))
    lin.eval()
    val_lin = float(np.abs((xv @ w + b) * dstd + dmean - yv).mean())
    # MLP with the ridge as its starting linear part
    mlp = _Graph(x_tr.shape[1], H, cfg.hidden, dmean, dstd)
    with torch.no_grad():
        mlp.linear.weight.copy_(lin.linear.weight)
        mlp.linear.bias.copy_(lin.linear.bias)
        last = mlp.mlp[2]  # type: ignore[index]
        last.weight.mul_(0.1)
        last.bias.zero_()
    val_mlp = _train_mlp(mlp, xa, tr.y[:-nv], xv, yv, cfg)
    chosen, kind = (mlp, "mlp") if val_mlp < val_lin else (lin, "ridge")

    def pred(g: _Graph, x: FloatArray) -> FloatArray:
        with torch.no_grad():
            return np.asarray(g(torch.from_numpy(x.astype(np.float32))).numpy(), dtype=np.float64)

    onnx_bytes = to_onnx(chosen, torch.from_numpy(x_te[:2].astype(np.float32)), "x", ["demand"])
    served = run_onnx(onnx_bytes, x_te.astype(np.float32))[0].astype(np.float64)
    res = {
        "model (onnx, shipped)": _errors(served, te.y),
        "ridge": _errors(pred(lin, x_te), te.y),
        "mlp": _errors(pred(mlp, x_te), te.y),
        "seasonal-naive week": _errors(te.week, te.y) if np.isfinite(te.week).all() else None,
        "seasonal-naive day": _errors(te.day, te.y),
    }
    naive = min(v["mae_m3h"] for k, v in res.items() if k.startswith("seasonal") and v)
    gain = 1 - res["model (onnx, shipped)"]["mae_m3h"] / naive
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    report: dict[str, Any] = {
        "name": cfg.name,
        "version": cfg.version,
        "task": "forecast",
        "summary": (
            f"{kind} chosen (validation MAE ridge {val_lin:.2f}, mlp {val_mlp:.2f} m3/h); test MAE "
            f"{res['model (onnx, shipped)']['mae_m3h']:.2f} m3/h, {100 * gain:.1f} % below the best "
            f"seasonal-naive ({naive:.2f})"
        ),
        "chosen": kind,
        "validation_mae_m3h": {"ridge": val_lin, "mlp": val_mlp},
        "test": {
            "what": "files " + ", ".join(map(str, test)) if test else f"last {frac:.0%} of each file",
            "rows": len(te.y),
            "errors": res,
            "improvement_vs_best_naive": gain,
        },
        "train": {"files": [str(p) for p in data], "rows": len(tr.y)},
        "window": {"history_h": L, "horizon_h": H, "roles": roles},
    }
    (out_dir / "report.json").write_text(
        json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    files = {
        n: {
            "sha256": hashlib.sha256((out_dir / n).read_bytes()).hexdigest(),
            "size": (out_dir / n).stat().st_size,
        }
        for n in ("report.json", "report.md")
    }
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=cfg.name,
        version=cfg.version,
        task="forecast",
        description=f"hourly mean demand for the next {H} h from the last {L} h ({kind})",
        window=WindowSpec(sample_period_s=3600, length=L, stride=1),
        inputs=tuple(inputs),
        features=FeatureSpec(kind="flatten"),
        model_input=TensorSpec(name="x", shape=("batch", L * len(roles))),
        outputs=(
            OutputSpec(
                name="demand", meaning=f"hourly mean demand, next {H} h", shape=("batch", H), unit="m3/h"
            ),
        ),
        variants=(
            Variant(
                file="model.onnx",
                sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                size=len(onnx_bytes),
                cpu_features=cpu_features(),
                note=kind,
            ),
        ),
        files=files,  # type: ignore[arg-type]
        provenance={"holidays": ",".join(d.isoformat() for d in cfg.holidays), "timezone": cfg.timezone},
    )
    (out_dir / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    if cfg.key is not None:
        from agent.modelstore.signing import sign_bundle

        sign_bundle(out_dir, cfg.key)
    return report


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# {r['name']} v{r['version']}: demand forecast",
        "",
        r["summary"],
        "",
        f"Test: {r['test']['what']} ({r['test']['rows']} forecasts of {r['window']['horizon_h']} h).",
        "",
        "| forecast | MAE m³/h | RMSE m³/h | MAPE % |",
        "|---|---:|---:|---:|",
    ]
    for k, v in r["test"]["errors"].items():
        if v:
            lines.append(f"| {k} | {v['mae_m3h']:.2f} | {v['rmse_m3h']:.2f} | {v['mape_pct']:.1f} |")
    lines += [
        "",
        "Improvement over the best seasonal-naive (MAE): "
        f"{100 * r['test']['improvement_vs_best_naive']:.1f} %",
        "",
    ]
    return "\n".join(lines)
