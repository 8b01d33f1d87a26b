"""INT8 that passes its gate or says why: the settings search, in-graph normalisation, checks.

:func:`search_int8` quantizes the FP32 model once per setting and gates every result
(:func:`export.gates.gate_int8_agreement` on the check windows):

* weights INT8, symmetric, per output channel (plus the former default, per-tensor MinMax, as
  the reference row);
* the activation calibration among MinMax, Percentile and Entropy (onnxruntime
  ``CalibrationMethod``);
* the first and/or last layer left in FP32 (``nodes_to_exclude``) or not;
* activations 8-bit, or 16-bit (``W8A16``: onnxruntime's 16-bit QDQ, opset 21): a classifier
  whose fault windows drive its features to hundreds of sigmas spans three orders of magnitude
  in every layer, which 256 levels cannot hold (fault-mlp: at best 0.916 top-1 agreement with
  8-bit activations, 0.995-0.999 with 16-bit; weights stay INT8, the size halves);
* ``reduce_range`` only where this CPU lacks VNNI / dot-product (:func:`export.onnx_tools.has_int8_dot`).

Every trial is a report row (activations, method, per-channel, FP32 layers, agreement, size,
FP32 and INT8 latency measured side by side). A setting passes when it passes the gate on the
test windows and on the windows the bundle carries as checks (the gate the gateway re-runs).
Of the passing ones, 8-bit activations before 16-bit, then per-channel weights before the
reference row, then the smallest file (what INT8 brings
to a 30 KB model is bytes; its speed is decided on the gateway, and a layer left in FP32 only
where it costs the agreement is what the smallest passing file has), then the best agreement;
when none passes, none ships and the reason gives the numbers.
Where INT8 brings nothing on the build CPU it still ships when it passes: the install self-test
re-runs the gate on the gateway (``Manifest.agreement`` over ``Manifest.checks``) and keeps the
faster passing variant there.

:func:`normalise_inputs` moves the per-role normalisation into the graph (schema 2
``input_normalisation``): the graph's first ops are ``(x - offset) / scale`` with the constants
as initializers, the agent feeds raw features, and the calibration sees what the first quantized
op sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.modelstore.manifest import (
    AgreementGate,
    CheckVector,
    FeatureSpec,
    GraphNormalisation,
    InputRole,
    Normalisation,
)
from export import gates
from export.onnx_tools import (
    CALIBRATION_METHODS,
    INPUT_OFFSET,
    INPUT_SCALE,
    has_int8_dot,
    latency_pair_us,
    layers,
    normalise_in_graph,
    quantize_int8,
    run_onnx,
)

__all__ = [
    "CHECK_WINDOWS",
    "Int8Search",
    "Setting",
    "Trial",
    "agreement_gate",
    "candidate_settings",
    "feature_affine",
    "make_checks",
    "normalise_inputs",
    "search_int8",
]

CHECK_WINDOWS = 200
"""Test windows the bundle carries as checks (a classifier's 70 features each: ~300 KB of
manifest, within the 1 MiB limit); the agreement gate is passed on exactly these too."""

Quantizer = Callable[..., tuple[bytes, dict[str, str]]]


@dataclass(frozen=True)
class Setting:
    """One quantization setting tried."""

    method: str
    per_channel: bool
    fp32_layers: tuple[str, ...]  # "first", "last"
    reduce_range: bool
    activation: str = "uint8"

    @property
    def activation_bits(self) -> int:
        return 16 if self.activation.endswith("16") else 8

    def label(self) -> str:
        kept = "+".join(self.fp32_layers) or "none"
        weights = "per-channel" if self.per_channel else "per-tensor"
        return (
            f"W8A{self.activation_bits} {self.method}, {weights}, "
            f"FP32 layers {kept}{', reduce_range' if self.reduce_range else ''}"
        )


@dataclass
class Trial:
    """What one setting gave (``agreement``: top-1 agreement or score correlation with FP32)."""

    setting: Setting
    agreement: float = float("nan")
    agreement_checks: float = float("nan")
    passed: bool = False
    size: int = 0
    latency_fp32_us: float = float("nan")
    latency_int8_us: float = float("nan")
    noise_us: float = float("nan")
    error: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    model: bytes = field(default=b"", repr=False)

    def row(self, kind: str) -> dict[str, Any]:
        """The report row (``report.json`` ``int8.trials``)."""
        return {
            "activation": self.setting.activation,
            "method": self.setting.method,
            "per_channel": self.setting.per_channel,
            "fp32_layers": list(self.setting.fp32_layers),
            "reduce_range": self.setting.reduce_range,
            "top1_agreement" if kind == "top1" else "score_correlation": self.agreement,
            "on_checks": self.agreement_checks,
            "passed": self.passed,
            "size": self.size,
            "latency_fp32_us": self.latency_fp32_us,
            "latency_int8_us": self.latency_int8_us,
            "latency_noise_us": self.noise_us,
            **({"error": self.error} if self.error else {}),
        }


@dataclass
class Int8Search:
    """Every trial, the one that ships (None: none passed) and why."""

    kind: str
    minimum: float
    fp32_size: int
    trials: list[Trial]
    chosen: Trial | None
    reason: str

    def table_md(self) -> str:
        """The trials as a Markdown table (the bundle report)."""
        what = "top-1 agreement" if self.kind == "top1" else "score correlation"
        lines = [
            f"| activations | calibration | weights | FP32 layers | reduce_range | {what} | on checks | "
            f"gate | size (B) | FP32 us | INT8 us | noise us |",
            "|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for t in self.trials:
            s = t.setting
            head = (
                f"| {s.activation} | {s.method} | {'per-channel' if s.per_channel else 'per-tensor'} | "
                f"{'+'.join(s.fp32_layers) or 'none'} | {str(s.reduce_range).lower()} | "
            )
            if t.error:
                lines.append(head + f"- | - | error: {t.error} | | | | |")
                continue
            gate = ("pass" if t.passed else "fail") + (" **ships**" if t is self.chosen else "")
            lines.append(
                head + f"{t.agreement:.4f} | {t.agreement_checks:.4f} | {gate} | "
                f"{t.size} | {t.latency_fp32_us:.1f} | {t.latency_int8_us:.1f} | {t.noise_us:.1f} |"
            )
        return "\n".join(lines)

    def report(self) -> dict[str, Any]:
        """``report.json`` ``int8``: the gate, every trial, the choice and the reason."""
        return {
            "gate": {"kind": self.kind, "minimum": self.minimum},
            "fp32_size": self.fp32_size,
            "trials": [t.row(self.kind) for t in self.trials],
            "chosen": self.chosen.setting.label() if self.chosen else None,
            "reason": self.reason,
            "table_md": self.table_md(),
        }


def candidate_settings(n_layers: int, reduce_range: bool, activation: str = "uint8") -> list[Setting]:
    """The settings tried, in order: the former default (per-tensor MinMax with reduce_range)
    as the reference, then 8-bit and 16-bit activations × every calibration method × FP32
    layers (none, first, last, both) with per-channel symmetric INT8 weights. Excluding every
    layer is not INT8, so a model with one layer (two) tries no exclusion (only one)."""
    wide = "int16" if activation == "int8" else "uint16"
    out = [Setting("minmax", False, (), True, activation)]
    exclusions: list[tuple[str, ...]] = [()]
    if n_layers >= 2:
        exclusions += [("first",), ("last",)]
    if n_layers >= 3:
        exclusions.append(("first", "last"))
    for act in (activation, wide):
        for ex in exclusions:
            for method in CALIBRATION_METHODS:
                out.append(Setting(method, True, ex, reduce_range, act))
    return out


def _rank(t: Trial) -> tuple[int, bool, int, float]:
    """Passing trials, best first: 8-bit activations, then per-channel weights (the per-tensor
    reference row, with its reduce_range, ships only when no per-channel setting passes), then
    the smallest file, then the best agreement (then the order tried: the choice never depends
    on a timing)."""
    return (t.setting.activation_bits, not t.setting.per_channel, t.size, -t.agreement)


def search_int8(
    fp32: bytes,
    x_calibration: npt.NDArray[np.float32],
    x_check: npt.NDArray[np.float32],
    *,
    kind: str,
    activation: str = "uint8",
    weight: str = "int8",
    reduce_range: bool | None = None,
    quantizer: Quantizer = quantize_int8,
    settings: Sequence[Setting] | None = None,
    x_gate: npt.NDArray[np.float32] | None = None,
    progress: bool = False,
) -> Int8Search:
    """Quantize ``fp32`` with every setting, gate each on ``x_check`` (the gate of ``kind``:
    ``top1`` on the first output's classes, ``correlation`` on the first output) and on
    ``x_gate`` (the bundle's check rows, when given), and choose.

    ``reduce_range`` None: on only where this CPU lacks an INT8 dot-product (and weights are
    signed). ``settings`` overrides :func:`candidate_settings`; ``activation`` is the 8-bit
    activation type (its 16-bit sibling is tried too)."""
    names = layers(fp32)
    if reduce_range is None:
        reduce_range = weight == "int8" and not has_int8_dot()
    todo = (
        list(settings) if settings is not None else candidate_settings(len(names), reduce_range, activation)
    )
    ref = run_onnx(fp32, x_check)[0]
    ref_gate = run_onnx(fp32, x_gate)[0] if x_gate is not None else None
    minimum = gates.INT8_TOP1 if kind == "top1" else gates.INT8_CORRELATION
    trials: list[Trial] = []
    for s in todo:
        t = Trial(s)
        trials.append(t)
        exclude = [names[0] if k == "first" else names[-1] for k in s.fp32_layers]
        try:
            q, t.settings = quantizer(
                fp32,
                x_calibration,
                activation=s.activation,
                weight=weight,
                reduce_range=s.reduce_range,
                per_channel=s.per_channel,
                method=s.method,
                exclude=sorted(set(exclude)),
                progress=progress,
            )
            got = run_onnx(q, x_check)[0]
        except Exception as exc:  # onnxruntime raises many types; the row says which
            t.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            continue
        t.model, t.size = q, len(q)
        t.passed, t.agreement = _gate(ref, got, kind)
        if ref_gate is not None and x_gate is not None:
            on_checks, t.agreement_checks = _gate(ref_gate, run_onnx(q, x_gate)[0], kind)
            t.passed = t.passed and on_checks
        t.latency_fp32_us, t.latency_int8_us, t.noise_us = latency_pair_us(fp32, q, x_check[:1])
    passing = sorted((t for t in trials if t.passed), key=_rank)
    chosen = passing[0] if passing else None
    what = "top-1 agreement" if kind == "top1" else "score correlation"
    if chosen is None:
        done = [t for t in trials if not t.error]
        if done:
            best = max(done, key=lambda t: t.agreement)
            reason = (
                f"INT8 {what} with FP32 is at best {best.agreement:.4f} ({best.setting.label()}; "
                f"needs >= {minimum:g}): no setting of {len(trials)} passed on {len(x_check)} windows"
                + _diagnosis(done)
            )
        else:
            reason = f"no INT8 setting could be quantized: {trials[0].error if trials else 'none tried'}"
    else:
        gain = chosen.latency_fp32_us - chosen.latency_int8_us
        fp32_size = len(fp32)
        numbers = (
            f"{chosen.latency_int8_us:.1f} us vs FP32 {chosen.latency_fp32_us:.1f} us (noise "
            f"{chosen.noise_us:.1f} us), {chosen.size} vs {fp32_size} B"
        )
        within = abs(gain) <= max(chosen.noise_us, 0.05 * chosen.latency_fp32_us)
        if within and chosen.size > 0.5 * fp32_size:
            brings = (
                f"INT8 brings nothing on this CPU ({numbers}): it ships because it passed, and the "
                "install self-test keeps the faster passing variant"
            )
        elif gain < 0 and not within:
            brings = (
                f"INT8 is slower on this CPU ({numbers}): it ships because it passed, and the install "
                "self-test keeps the faster passing variant"
            )
        else:
            brings = f"INT8 {numbers}"
        reason = (
            f"{chosen.setting.label()} ships: {what} {chosen.agreement:.4f} >= {minimum:g} "
            f"on {len(x_check)} windows; {brings}"
        )
    return Int8Search(kind, minimum, len(fp32), trials, chosen, reason)


def _diagnosis(done: Sequence[Trial]) -> str:
    """What the failed settings say about the cause: the activations (16-bit helps) or the
    INT8 weights (it does not), for the layers quantized everywhere."""
    best: dict[int, float] = {}
    for t in done:
        if t.setting.per_channel:
            bits = t.setting.activation_bits
            best[bits] = max(best.get(bits, -1.0), t.agreement)
    if 8 not in best or 16 not in best:
        return ""
    a8, a16 = best[8], best[16]
    cause = (
        "8-bit activations cost the agreement"
        if a16 - a8 > 0.5 * (1.0 - a8)
        else "the INT8 weights cost it, not the activations' width"
    )
    return f"; best with 8-bit activations {a8:.4f}, with 16-bit {a16:.4f}: {cause}"


def _gate(ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32], kind: str) -> tuple[bool, float]:
    """(passed, measured) of the INT8 gate of ``kind``."""
    try:
        m = gates.gate_int8_agreement(ref, got, kind=kind)
        passed = True
    except gates.GateError as exc:
        m, passed = exc.measured, False
    return passed, float(next(iter(m.values())))


# --------------------------------------------------------------------------- in-graph normalisation


def feature_affine(
    roles: Sequence[Normalisation], features: FeatureSpec, length: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per model-input feature (one row, without batch) the ``(offset, scale)`` that turn the
    features of a raw window into those of the normalised window the model was trained on:
    ``features(normalised) == (features(raw) - offset) / scale``
    (:func:`agent.pipeline.features.window_to_input` is linear in each role: a location stat
    moves with the offset, a spread or a slope only scales)."""
    off = np.array([r.offset for r in roles], np.float64)
    sc = np.array([r.scale for r in roles], np.float64)
    if features.kind == "sequence":
        return np.tile(off, (length, 1)), np.tile(sc, (length, 1))
    if features.kind == "flatten":
        return np.tile(off, length), np.tile(sc, length)
    zero = np.zeros_like(off)
    offs = [zero if stat.removeprefix("recent_") in ("std", "slope") else off for stat in features.stats]
    return np.concatenate(offs), np.concatenate([sc for _ in features.stats])


def normalise_inputs(
    fp32: bytes,
    manifest: Mapping[str, Any],
    xs: Sequence[npt.NDArray[np.float32]],
) -> tuple[bytes, dict[str, Any], list[npt.NDArray[np.float32]]]:
    """Move the roles' normalisation into the graph: returns the graph with ``(x - offset) /
    scale`` in front (initializers), the manifest fields with every role's normalisation
    ``none`` and ``input_normalisation`` set (schema 2), and ``xs`` (normalised model inputs)
    turned back into the raw features the agent will feed."""
    inputs = [r if isinstance(r, InputRole) else InputRole.model_validate(r) for r in manifest["inputs"]]
    feats = manifest["features"]
    feats = feats if isinstance(feats, FeatureSpec) else FeatureSpec.model_validate(feats)
    window = manifest["window"]
    length = int(window["length"] if isinstance(window, Mapping) else window.length)
    norms = tuple(r.normalisation for r in inputs)
    off, sc = feature_affine(norms, feats, length)
    model = normalise_in_graph(fp32, off, sc)
    fields = dict(manifest)
    none = Normalisation(kind="none")
    fields["inputs"] = tuple(r.model_copy(update={"normalisation": none}) for r in inputs)
    fields["input_normalisation"] = GraphNormalisation(offset=INPUT_OFFSET, scale=INPUT_SCALE, roles=norms)
    raw = [(np.asarray(x, np.float64) * sc + off).astype(np.float32) for x in xs]
    return model, fields, raw


# --------------------------------------------------------------------------- checks


def _f32(a: npt.NDArray[Any]) -> list[Any]:
    """Nested lists of the shortest decimal that reads back as the same float32 (a third of
    float64's text in the manifest)."""
    values = np.asarray(a, np.float32).ravel()
    flat = [float(np.format_float_positional(v, unique=True, trim="-")) for v in values]
    out: Any = np.array(flat, dtype=object).reshape(np.shape(a)).tolist()
    return list(out)


def make_checks(
    fp32: bytes,
    x_check: npt.NDArray[np.float32],
    output_names: Sequence[str],
    *,
    n: int = CHECK_WINDOWS,
    seed: int = 0,
    tolerance: float = 1e-4,
) -> tuple[tuple[CheckVector, ...], npt.NDArray[np.float32]]:
    """``n`` of the ``x_check`` rows (seeded sample, in order) with the FP32 model's outputs:
    the bundle's checks; also returns the rows (to gate INT8 on exactly these).

    The tolerance is ``tolerance`` or, when larger, ten times the largest output change that a
    relative 1e-6 perturbation of the inputs makes: another CPU's kernels sum in another order,
    and a confident classifier's logits in the hundreds turn float32 round-off into more than
    1e-4 of a near-tie probability (fault-mlp: 5e-5 per 1e-6)."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(x_check))[:n])
    x = np.ascontiguousarray(x_check[idx], np.float32)
    x = np.asarray(_f32(x), np.float32)  # exactly what the manifest will hold
    outs = run_onnx(fp32, x)
    noise = np.random.default_rng(seed + 1).standard_normal(x.shape)
    moved = run_onnx(fp32, (x * (1.0 + 1e-6 * noise)).astype(np.float32))
    change = max(
        float(np.max(np.abs(np.asarray(b, np.float64) - a) / (1.0 + np.abs(a)), initial=0.0))
        for a, b in zip((np.asarray(o, np.float64) for o in outs), moved, strict=True)
    )
    tolerance = float(max(tolerance, 10.0 * change))
    vec = CheckVector(
        inputs=_f32(x),
        outputs={name: _f32(o) for name, o in zip(output_names, outs, strict=True)},
        tolerance=tolerance,
    )
    return (vec,), x


def agreement_gate(search: Int8Search, output: str, file: str) -> AgreementGate:
    """The chosen INT8's gate as the manifest carries it (measured on the check rows)."""
    assert search.chosen is not None
    return AgreementGate(
        output=output, kind=search.kind, minimum=search.minimum,  # type: ignore[arg-type]
        measured={file: search.chosen.agreement_checks},
    )
