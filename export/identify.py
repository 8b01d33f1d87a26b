"""Identify the pumping station from its own data: a signed recommender bundle.

``edge-export identify --data FILES --config CFG --out DIR [--prior station.yaml] [--key PEM]``

From recorded speed, flow, suction and discharge pressure and power of every pump (the tags the
config's ``recommender.pumps`` name), the tank level and the outlet flow, fit by least squares
with the datasheet values as a prior (a ridge toward the prior, each parameter weighted by its
stated uncertainty — the Bayesian linear regression posterior):

* per pump, the head curve ``H = a r² + b r q − c q²`` (H from the pressures, r = n / n_rated)
  and the electrical power ``P = d0 + p0 r³ + p1 r² q + p2 r q² + p3 q³`` (affinity laws: the
  cubic part is ``r³ g(q / r)``);
* the system: ``H = static + level + k Q² + k_s q²`` (every pump's differential head against
  the station flow Q and its own flow q);
* the tank area from ``ΔL = ΔV / A`` over 10-minute windows (V: pumped in − drawn out).

Standard errors come from the posterior covariance with the residual variance, inflated for
the residuals' autocorrelation (consecutive samples are not independent). The bundle
(:mod:`agent.modelstore.station`) holds the parameters, the report (``report.json``/``.md``)
the fit residuals and the prior against the posterior. The BEP flow is the maximum of the
fitted wire-to-water efficiency at rated speed; the minimum continuous flow is
``recommender.min_flow_fraction`` of it unless the config gives one per pump.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import ValidationError

from agent.config import Config, load_config
from agent.modelstore.station import STATION_FILE, StationManifest, load_station_bundle
from agent.pipeline.policy import PumpStationModel, RecommenderConfig, StationCurves
from export.data import load_columns

__all__ = ["DEFAULT_UNCERTAINTY", "IdentifyResult", "Prior", "fit_station", "identify", "load_prior"]

FloatArray = npt.NDArray[np.float64]
BAR_PER_M = 998.2 * 9.80665 / 1e5
RHO_G_KWH = 998.2 * 9.80665 / 3.6e6

#: relative 1-sigma uncertainty of datasheet values when the prior file states none
DEFAULT_UNCERTAINTY: dict[str, float] = {
    "shutoff_head_m": 0.15,
    "head_linear": 0.005,  # b, relative to H0 / q_bep: datasheet curves are near a r² − c q²
    "head_coeff": 0.3,
    "power": 0.2,
    "static_head_m": 0.2,
    "system_k": 0.5,
    "suction_k": 1.0,
    "tank_area_m2": 0.25,
}
PERIOD_S = 10.0  # the fit samples every 10 s: consecutive seconds add little but time


@dataclass(frozen=True)
class Prior:
    """Datasheet values and their relative uncertainty."""

    station: PumpStationModel
    uncertainty: Mapping[str, float]


def load_prior(path: Path | None, recommender: RecommenderConfig) -> Prior:
    """The prior file (``station:`` datasheet fields, ``uncertainty:`` relative sigmas), or the
    config's ``recommender.station`` with :data:`DEFAULT_UNCERTAINTY`."""
    if path is None:
        return Prior(recommender.station, dict(DEFAULT_UNCERTAINTY))
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a prior file is a mapping with 'station' and 'uncertainty'")
    unknown = set(data) - {"station", "uncertainty"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)} (expected station, uncertainty)")
    try:
        station = PumpStationModel.model_validate(data.get("station") or {})
    except ValidationError as exc:  # one line naming the field
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"{path}: station.{where}: {err['msg']}") from None
    unc = dict(DEFAULT_UNCERTAINTY)
    for k, v in (data.get("uncertainty") or {}).items():
        if k not in DEFAULT_UNCERTAINTY:
            raise ValueError(f"{path}: uncertainty.{k}: unknown (known: {sorted(DEFAULT_UNCERTAINTY)})")
        if not isinstance(v, int | float) or not v > 0:
            raise ValueError(f"{path}: uncertainty.{k}: must be a positive number, got {v!r}")
        unc[k] = float(v)
    return Prior(station, unc)


# --------------------------------------------------------------------------- the fit


@dataclass(frozen=True)
class _Posterior:
    mean: FloatArray
    se: FloatArray
    rms: float
    n: int


def _bayes_ridge(x: FloatArray, y: FloatArray, mu0: FloatArray, sd0: FloatArray) -> _Posterior:
    """Posterior of y = X θ + e with θ ~ N(mu0, sd0²), noise variance from the residuals."""
    prec0 = 1.0 / (sd0 * sd0)
    sigma2 = float(np.var(y)) * 1e-2 + 1e-12
    for _ in range(4):  # the noise variance and the posterior mean, to a fixed point
        a = x.T @ x / sigma2 + np.diag(prec0)
        mean = np.linalg.solve(a, x.T @ y / sigma2 + prec0 * mu0)
        res = y - x @ mean
        sigma2 = max(float(np.mean(res * res)), 1e-12)
    rho = float(np.corrcoef(res[:-1], res[1:])[0, 1]) if len(res) > 3 else 0.0
    rho = min(max(rho if math.isfinite(rho) else 0.0, 0.0), 0.99)
    inflate = (1 + rho) / (1 - rho)  # n / n_eff for AR(1) residuals
    a = x.T @ x / (sigma2 * inflate) + np.diag(prec0)
    cov = np.linalg.inv(a)
    return _Posterior(mean, np.sqrt(np.diag(cov)), math.sqrt(sigma2), len(y))


def _power_features(q: FloatArray, r: FloatArray) -> FloatArray:
    return np.stack([np.ones_like(q), r**3, r * r * q, r * q * q, q**3], axis=1)


def _datasheet_power_prior(m: PumpStationModel) -> FloatArray:
    """The datasheet's power curve in the fitted form (least squares on its operating range)."""
    curves = StationCurves.from_datasheet(m, 1, [], 0.3)
    rs, xs = np.meshgrid(np.linspace(0.5, 1.02, 27), np.linspace(0.2, 1.5, 27))
    r, q = rs.ravel(), (xs * rs).ravel() * m.bep_flow_m3h
    p = np.array([curves.pumps[0].power(float(qi), float(ri)) for qi, ri in zip(q, r, strict=True)])
    coef, *_ = np.linalg.lstsq(_power_features(q, r), p, rcond=None)
    return np.asarray(coef)


@dataclass(frozen=True)
class IdentifyResult:
    manifest: StationManifest
    report: dict[str, Any]


def fit_station(
    columns: Mapping[str, FloatArray], config: RecommenderConfig, prior: Prior, sources: Sequence[str]
) -> IdentifyResult:
    """Fit the station from ``columns`` (tag → values on one 10 s grid, NaN where not GOOD)."""
    m = prior.station
    u = prior.uncertainty
    rated = m.rated_speed_rpm
    level = columns[config.level_tag]
    demand = columns[config.demand_tag]
    per_pump: list[dict[str, FloatArray]] = []
    for p in config.pumps:
        per_pump.append(
            {
                "n": columns[_tag(p.speed_tag)],
                "q": columns[_tag(p.flow_tag)],
                "ps": columns[_tag(p.suction_pressure_tag)],
                "pd": columns[_tag(p.discharge_pressure_tag)],
                "p": columns[_tag(p.power_tag)],
            }
        )
    q_tot = np.sum([d["q"] for d in per_pump], axis=0)
    report_pumps: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []
    power_prior = _datasheet_power_prior(m)
    sys_x: list[FloatArray] = []
    sys_y: list[FloatArray] = []
    for p, d in zip(config.pumps, per_pump, strict=True):
        r = d["n"] / rated
        head = (d["pd"] - d["ps"]) / BAR_PER_M
        ok = (
            np.isfinite(r)
            & np.isfinite(d["q"])
            & np.isfinite(head)
            & np.isfinite(d["p"])
            & (r > 0.3)
            & (d["q"] > 1)
        )
        if ok.sum() < 30:
            raise ValueError(
                f"pump {p.asset}: only {int(ok.sum())} usable samples (running, every tag GOOD); need 30"
            )
        q, r, head, pw = d["q"][ok], r[ok], head[ok], d["p"][ok]
        x_h = np.stack([r * r, r * q, -q * q], axis=1)
        mu_h = np.array([m.shutoff_head_m, 0.0, m.head_coeff])
        sd_h = np.array(
            [
                u["shutoff_head_m"] * m.shutoff_head_m,
                u["head_linear"] * m.shutoff_head_m / m.bep_flow_m3h,
                u["head_coeff"] * m.head_coeff,
            ]
        )
        fh = _bayes_ridge(x_h, head, mu_h, sd_h)
        sd_p = u["power"] * np.maximum(
            np.abs(power_prior), 0.05 * m.motor_rated_power_kw / np.array([1, 1, 100, 1e4, 1e6])
        )
        fp = _bayes_ridge(_power_features(q, r), pw, power_prior, sd_p)
        # wire-to-water BEP at the median speed of the data (where the power fit holds),
        # scaled to rated speed by the affinity laws
        r_med = float(np.median(r))
        qq = np.linspace(0.2, 2.0, 400) * m.bep_flow_m3h * r_med
        rr = np.full_like(qq, r_med)
        hh = fh.mean[0] * r_med * r_med + fh.mean[1] * r_med * qq - fh.mean[2] * qq * qq
        pp = _power_features(qq, rr) @ fp.mean
        eta = np.where((hh > 0) & (pp > 0), RHO_G_KWH * qq * hh / np.maximum(pp, 1e-9), 0.0)
        q_bep = float(qq[int(np.argmax(eta))]) / r_med
        # the BEP is often outside the data (a big pump never runs there): the minimum flow
        # takes the larger of the identified and the datasheet BEP, to err on the safe side
        q_ref = max(q_bep, m.bep_flow_m3h)
        min_flow = p.min_flow_m3h if p.min_flow_m3h is not None else config.min_flow_fraction * q_ref
        fits.append(
            {
                "asset": p.asset,
                "head": [{"value": float(v), "se": float(s)} for v, s in zip(fh.mean, fh.se, strict=True)],
                "power": [{"value": float(v), "se": float(s)} for v, s in zip(fp.mean, fp.se, strict=True)],
                "bep_flow_m3h": q_bep,
                "min_flow_m3h": float(min_flow),
                "residual_head_m": fh.rms,
                "residual_power_kw": fp.rms,
            }
        )
        report_pumps.append(
            {
                "asset": p.asset,
                "samples": fh.n,
                "speed_range_rpm": [float(r.min() * rated), float(r.max() * rated)],
                "flow_range_m3h": [float(q.min()), float(q.max())],
                "head_rms_m": fh.rms,
                "power_rms_kw": fp.rms,
                "best_efficiency": float(eta.max()),
                "prior": {"head": mu_h.tolist(), "power": power_prior.tolist()},
            }
        )
        lv = level[ok]
        qt = q_tot[ok]
        good = np.isfinite(lv) & np.isfinite(qt)
        sys_x.append(np.stack([np.ones(good.sum()), qt[good] ** 2, q[good] ** 2], axis=1))
        sys_y.append(head[good] - lv[good])
    xs, ys = np.concatenate(sys_x), np.concatenate(sys_y)
    mu_s = np.array([m.static_head_m, m.system_k, m.suction_k])
    sd_s = np.array(
        [
            u["static_head_m"] * m.static_head_m + 0.5,
            u["system_k"] * m.system_k + 1e-6,
            u["suction_k"] * m.suction_k + 1e-6,
        ]
    )
    fs = _bayes_ridge(xs, ys, mu_s, sd_s)
    area, area_se, area_n = _tank_area(level, q_tot, demand, m, u["tank_area_m2"])
    manifest = StationManifest(
        name=config.level_tag.split(".")[0].lower() or "station",
        created_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        rated_speed_rpm=rated,
        pumps=fits,  # type: ignore[arg-type]
        system={  # type: ignore[arg-type]
            "static_head_m": {"value": float(fs.mean[0]), "se": float(fs.se[0])},
            "system_k": {"value": float(fs.mean[1]), "se": float(fs.se[1])},
            "suction_k": {"value": float(fs.mean[2]), "se": float(fs.se[2])},
            "tank_area_m2": {"value": area, "se": area_se},
            "residual_head_m": fs.rms,
        },
        data={"sources": [str(s) for s in sources], "period_s": PERIOD_S, "samples": len(level)},
    )
    report = {
        "name": manifest.name,
        "created_utc": manifest.created_utc,
        "sources": list(sources),
        "pumps": report_pumps,
        "system": {"samples": fs.n, "head_rms_m": fs.rms, "prior": mu_s.tolist(), "tank_windows": area_n},
        "parameters": manifest.model_dump(mode="json", include={"pumps", "system"}),
    }
    return IdentifyResult(manifest, report)


def _tag(name: str | None) -> str:
    if name is None:  # checked by identify() against the config first
        raise ValueError("a recommender pump has no tag for a value the fit needs")
    return name


def _tank_area(
    level: FloatArray, q_in: FloatArray, demand: FloatArray, m: PumpStationModel, rel_sd: float
) -> tuple[float, float, int]:
    """A from ΔL = ΔV / A over 10-minute windows (slope s = 1/A, ridge toward the prior)."""
    w = int(600 / PERIOD_S)
    dv, dl = [], []
    for k in range(0, len(level) - w, w):
        seg = slice(k, k + w + 1)
        lv, qi, qd = level[seg], q_in[seg], demand[seg]
        if not (np.isfinite(lv).all() and np.isfinite(qi).all() and np.isfinite(qd).all()):
            continue
        # the level means are centred on samples 1 and w − 1: integrate the flows between them
        net = qi[1:w] - qd[1:w]
        dv.append(float(np.sum(0.5 * (net[:-1] + net[1:])) * PERIOD_S / 3600.0))
        dl.append(float(np.mean(lv[-3:]) - np.mean(lv[:3])))
    s0 = 1.0 / m.tank_area_m2
    if len(dv) < 3:
        return m.tank_area_m2, rel_sd * m.tank_area_m2, len(dv)
    post = _bayes_ridge(np.array(dv)[:, None], np.array(dl), np.array([s0]), np.array([rel_sd * s0]))
    s, se = float(post.mean[0]), float(post.se[0])
    return 1.0 / s, se / (s * s), len(dv)


# --------------------------------------------------------------------------- the bundle


def _needed_tags(rc: RecommenderConfig, cfg_path: Path) -> list[str]:
    tags = [rc.level_tag, rc.demand_tag]
    for i, p in enumerate(rc.pumps):
        for field in ("speed_tag", "flow_tag", "suction_pressure_tag", "discharge_pressure_tag", "power_tag"):
            v = getattr(p, field)
            if v is None:
                raise ValueError(f"{cfg_path}: recommender.pumps[{i}].{field}: identification needs it")
            tags.append(v)
    return tags


def _files_of(paths: Sequence[Path]) -> list[Path]:
    """CSV files, and the wide files of recording directories."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("wide-*.csv")) or sorted(p.glob("*.csv"))
            if not found:
                raise ValueError(f"{p}: a recording directory without wide-*.csv files")
            out += found
        else:
            out.append(p)
    return out


def _render_md(report: Mapping[str, Any], manifest: StationManifest) -> str:
    lines = [f"# Station identification: {manifest.name}", "", f"Created {manifest.created_utc} from:", ""]
    lines += [f"- `{s}`" for s in report["sources"]]
    lines += [
        "",
        "| pump | samples | head a (m) | b | c | head RMS (m) | power RMS (kW) | BEP (m³/h) | min flow |",
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for p, rp in zip(manifest.pumps, report["pumps"], strict=True):
        a, b, c = p.head
        lines.append(
            f"| {p.asset} | {rp['samples']} | {a.value:.2f} ± {a.se:.2f} | {b.value:.4f} ± {b.se:.4f} | "
            f"{c.value:.6f} ± {c.se:.6f} | {p.residual_head_m:.3f} | {p.residual_power_kw:.3f} | "
            f"{p.bep_flow_m3h:.1f} | {p.min_flow_m3h:.1f} |"
        )
    s = manifest.system
    lines += [
        "",
        f"System: static head {s.static_head_m.value:.2f} ± {s.static_head_m.se:.2f} m, "
        f"k {s.system_k.value:.3g} ± {s.system_k.se:.2g}, suction k {s.suction_k.value:.3g} ± "
        f"{s.suction_k.se:.2g}, tank area {s.tank_area_m2.value:.1f} ± {s.tank_area_m2.se:.1f} m², "
        f"head RMS {s.residual_head_m:.3f} m.",
        "",
    ]
    return "\n".join(lines)


def write_bundle(result: IdentifyResult, out: Path, key: Path | None) -> StationManifest:
    """Write (and with ``key`` sign) the bundle; the manifest lists the reports' hashes."""
    from agent.modelstore.signing import sign_bundle

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name, text in (
        ("report.json", json.dumps(result.report, indent=2) + "\n"),
        ("report.md", _render_md(result.report, result.manifest)),
    ):
        data = text.encode("utf-8")
        (out / name).write_bytes(data)
        files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = StationManifest.model_validate({**result.manifest.model_dump(), "files": files})
    (out / STATION_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (out / "signature.json").unlink(missing_ok=True)
    if key is not None:
        sign_bundle(out, key, signed_file=STATION_FILE)
    else:  # what the agent will read: hashes and schema
        load_station_bundle(out, [], allow_unsigned=True)
    return manifest


def identify(
    data: Sequence[Path],
    config_path: Path,
    out: Path,
    prior_path: Path | None = None,
    key: Path | None = None,
) -> StationManifest:
    """The whole command: read, fit, write and sign."""
    cfg: Config = load_config(config_path)
    rc = cfg.recommender
    if rc is None:
        raise ValueError(f"{config_path}: no recommender section: nothing to identify")
    tags = _needed_tags(rc, config_path)
    prior = load_prior(prior_path, rc)
    files = _files_of(data)
    chunks: list[FloatArray] = []
    for f in files:
        chunks += load_columns(f, tags, PERIOD_S)
    if not chunks:
        raise ValueError(f"no samples in {', '.join(str(f) for f in files)}")
    # a NaN row between recordings: no window of the tank fit spans two of them
    sep = np.full((1, len(tags)), np.nan)
    joined = np.concatenate([x for c in chunks for x in (c, sep)])
    columns = {t: joined[:, j] for j, t in enumerate(tags)}
    result = fit_station(columns, rc, prior, [str(f) for f in files])
    return write_bundle(result, out, key)
