"""Operating-point-conditioned anomaly model: what the plant is asked to do is not a fault.

A PCA over window features learns the *spread* of normal operation, so a new operating point
(the agent's own recommendation moving the load from one pump to another) is far from the
mean and reads as a fault. This model first explains every feature by the operating variables
(the inputs marked ``operating`` in the manifest: speed, flow, ambient temperature ...) and
monitors only what they do not explain:

1. Regressors ``u``: the window statistics (mean, std) of the operating roles (normalised, as
   the agent feeds them). Terms: every product of up to ``degree`` means (pump affinity laws:
   head ∝ n², power ∝ n³, so degree 3 covers the physics with no plant-specific formula), and
   each other statistic alone and times each mean (a step's spread scales with its level).
2. Targets ``y``: every other feature (means and standard deviations of the other roles).
3. ``y_hat = [1, terms(u)] B`` with ``B`` by ridge least squares on normal windows; residuals
   ``r = y - y_hat``.
4. While the commanded variable moves within the window (a setpoint step: its window standard
   deviation ``g``), the residuals are divided by their expected width ``sqrt(1 + a g²)``
   (:func:`fit_gate_gain`), so the few windows that hold a step do not set the thresholds.
5. Hotelling T² and SPE of a PCA on the residuals (:func:`export.pca_baseline.fit_pca`:
   components by parallel analysis, thresholds as empirical quantiles on held-out calibration
   windows).

The ONNX graph is plain linear algebra (Gather, Mul, Concat, MatMul, Add, Sub, ReduceSum),
``x[batch, F] → t2[batch], spe[batch]``: the same contract as the PCA bundle, so the agent
runs it unchanged. ``python -m export.pca_baseline --operating ROLE ...`` fits and writes it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from export.pca_baseline import IR_VERSION, OPSET, PcaModel, fit_pca
from export.pca_baseline import to_onnx as pca_to_onnx

__all__ = ["ConditionedModel", "feature_indices", "fit_conditioned", "fit_gate_gain", "to_onnx"]

FloatArray = npt.NDArray[np.float64]


def feature_indices(roles: Sequence[str], stats: Sequence[str], operating: Sequence[str]) -> tuple[
    tuple[int, ...], tuple[int, ...]
]:
    """(regressor, target) feature indices of ``summary`` features (``window_to_input``: one
    block of all roles per statistic). Regressors: every statistic of every operating role (the
    mean says where the plant is asked to run, the standard deviation that it was moved within
    the window: a setpoint step spreads every other signal too)."""
    unknown = [r for r in operating if r not in roles]
    if unknown:
        raise ValueError(f"operating role(s) {unknown} are not inputs (inputs: {list(roles)})")
    if "mean" not in stats:
        raise ValueError("an operating-point-conditioned model needs the 'mean' statistic")
    n = len(roles)
    order = [list(stats).index("mean")] + [i for i, s in enumerate(stats) if s != "mean"]
    reg = tuple(s * n + roles.index(r) for s in order for r in operating)  # the means first
    tgt = tuple(i for i in range(n * len(stats)) if i not in reg)
    return reg, tgt


def _design(x: FloatArray, regressors: Sequence[int], terms: Sequence[tuple[int, ...]]) -> FloatArray:
    u = x[:, list(regressors)]
    cols = [np.ones(len(u))] + [np.prod(u[:, list(t)], axis=1) for t in terms]
    return np.stack(cols, axis=1)


def _gate_scale(x: FloatArray, gate: int | None, gain: float) -> FloatArray:
    if gate is None:
        return np.ones((len(x), 1))
    out: FloatArray = np.sqrt(1.0 + gain * x[:, gate : gate + 1] ** 2)
    return out


def fit_gate_gain(raw: FloatArray, g: FloatArray) -> float:
    """``a`` in ``E[mean_j (r_j / s_j)^2 | g] = 1 + a g^2``: how much wider the residuals are while
    the plant is being moved (``g``: the within-window spread of the commanded variable; ``s_j``:
    each residual's spread in steady windows, ``g`` below its median). A window that holds a
    setpoint step is a transient the window statistics cannot fully explain; dividing by the
    expected width keeps its T² in the steady windows' scale, so thresholds are set by steady
    operation, not by the steps."""
    steady = g <= np.median(g)
    s = np.maximum(raw[steady].std(axis=0), 1e-9)
    q = np.mean((raw / s) ** 2, axis=1) - 1.0
    g2 = g * g
    denom = float(np.sum(g2 * g2))
    return max(0.0, float(np.sum(g2 * q)) / denom) if denom > 0 else 0.0


def _terms(n_mean: int, n_other: int, degree: int) -> tuple[tuple[int, ...], ...]:
    """Monomials over the regressors (the first ``n_mean`` are window means): every product of
    up to ``degree`` means (the affinity laws are polynomials in speed and flow), each other
    statistic alone and times each mean (a step's spread scales with the level it happens at);
    no powers of spreads, which extrapolate wildly on the rare windows that hold a step."""
    means = range(n_mean)
    poly = [t for d in range(1, degree + 1) for t in itertools.combinations_with_replacement(means, d)]
    others = [(j,) for j in range(n_mean, n_mean + n_other)]
    cross = [(i, j) for j in range(n_mean, n_mean + n_other) for i in means]
    return tuple(poly + others + cross)


@dataclass(frozen=True)
class ConditionedModel:
    """A fitted conditioned model: regression on the operating variables, PCA on the rest."""

    regressors: tuple[int, ...]  # feature indices of the operating means
    targets: tuple[int, ...]  # feature indices predicted from them
    terms: tuple[tuple[int, ...], ...]  # monomials over the regressors (indices into them)
    coef: FloatArray  # [1 + len(terms), len(targets)], the first row is the intercept
    pca: PcaModel  # on the residuals
    gate: int | None = None  # feature index of the spread that says the plant was being moved
    gate_gain: float = 0.0  # residuals are divided by sqrt(1 + gate_gain * x[gate]^2)

    @property
    def n_features(self) -> int:
        return len(self.regressors) + len(self.targets)

    @property
    def n_components(self) -> int:
        return self.pca.n_components

    @property
    def t2_limit(self) -> float:
        return self.pca.t2_limit

    @property
    def spe_limit(self) -> float:
        return self.pca.spe_limit

    @property
    def false_alarm_rate(self) -> float:
        return self.pca.false_alarm_rate

    @property
    def explained_variance(self) -> float:
        return self.pca.explained_variance

    @property
    def n_fit(self) -> int:
        return self.pca.n_fit

    @property
    def n_calibration(self) -> int:
        return self.pca.n_calibration

    def design(self, x: npt.ArrayLike) -> FloatArray:
        """``[1, terms(u)]`` for feature vectors ``[N, F]``."""
        return _design(np.asarray(x, dtype=np.float64), self.regressors, self.terms)

    def residuals(self, x: npt.ArrayLike) -> FloatArray:
        """What the operating variables do not explain: ``y - y_hat``, ``[N, len(targets)]``."""
        xf = np.asarray(x, dtype=np.float64)
        out: FloatArray = xf[:, list(self.targets)] - self.design(xf) @ self.coef
        return out / _gate_scale(xf, self.gate, self.gate_gain)

    def scores(self, x: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """The numpy reference: (T², SPE) of the residuals, for feature vectors ``[N, F]``."""
        return self.pca.scores(self.residuals(x))

    def alarms(self, x: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True where T² or SPE exceeds its limit (what the scorer's ``anomaly`` says)."""
        t2, spe = self.scores(x)
        out: npt.NDArray[np.bool_] = (t2 > self.t2_limit) | (spe > self.spe_limit)
        return out


def fit_conditioned(
    x: npt.ArrayLike,
    regressors: Sequence[int],
    *,
    calibration: npt.ArrayLike,
    n_means: int | None = None,
    degree: int = 3,
    ridge: float = 1e-6,
    false_alarm_rate: float = 1e-3,
    n_components: int | None = None,
    variance: float | None = None,
    gate: int | None = None,
) -> ConditionedModel:
    """Fit on normal feature vectors ``x[N, F]``; thresholds from ``calibration`` (held-out
    normal windows). ``regressors``: the feature indices of the operating variables' statistics,
    the first ``n_means`` (default: all) their window means. ``gate``: the feature index of the
    commanded variable's within-window spread (:func:`fit_gate_gain`), None for no gate."""
    xf = np.asarray(x, dtype=np.float64)
    cal = np.asarray(calibration, dtype=np.float64)
    f = xf.shape[1]
    reg = tuple(int(i) for i in regressors)
    if not reg or len(set(reg)) != len(reg) or not all(0 <= i < f for i in reg):
        raise ValueError(f"regressors must be distinct feature indices in [0, {f}), got {list(reg)}")
    if not 1 <= degree <= 4:
        raise ValueError("degree must be 1..4")
    tgt = tuple(i for i in range(f) if i not in reg)
    nm = len(reg) if n_means is None else n_means
    terms = _terms(nm, len(reg) - nm, degree)
    a = _design(xf, reg, terms)
    # ridge on the non-intercept terms only: a tiny one, against collinear powers
    gram = a.T @ a + ridge * len(a) * np.diag([0.0] + [1.0] * (a.shape[1] - 1))
    coef = np.linalg.solve(gram, a.T @ xf[:, list(tgt)])
    def raw(v: FloatArray) -> FloatArray:
        out: FloatArray = v[:, list(tgt)] - _design(v, reg, terms) @ coef
        return out

    gain = 0.0 if gate is None else fit_gate_gain(raw(xf), xf[:, gate])

    def residuals(v: FloatArray) -> FloatArray:
        return raw(v) / _gate_scale(v, gate, gain)

    pca = fit_pca(
        residuals(xf),
        calibration=residuals(cal),
        false_alarm_rate=false_alarm_rate,
        n_components=n_components,
        variance=variance,
    )
    return ConditionedModel(reg, tgt, terms, coef, pca, gate, gain)


def to_onnx(model: ConditionedModel, *, input_name: str = "x", name: str = "conditioned") -> onnx.ModelProto:
    """The model as ONNX (float32, opset 17): ``x[batch, F]`` → ``t2[batch]``, ``spe[batch]``."""

    def const(cname: str, value: npt.ArrayLike, dtype: type[np.generic] = np.float32) -> TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), cname)

    p = len(model.regressors)
    inits = [
        const("reg_idx", model.regressors, np.int64),
        const("tgt_idx", model.targets, np.int64),
        const("W", model.coef[1:]),
        const("b", model.coef[0]),
    ]
    nodes = [
        helper.make_node("Gather", [input_name, "reg_idx"], ["u"], axis=1),
        helper.make_node("Gather", [input_name, "tgt_idx"], ["y"], axis=1),
    ]
    # each regressor once as a [batch, 1] column, then every monomial as a product of columns
    for j in range(p):
        inits.append(const(f"col{j}", [j], np.int64))
        nodes.append(helper.make_node("Gather", ["u", f"col{j}"], [f"u{j}"], axis=1))
    names = []
    for t in model.terms:
        out = "m_" + "_".join(map(str, t))
        if len(t) == 1:
            out = f"u{t[0]}"
        else:
            prev = "m_" + "_".join(map(str, t[:-1])) if len(t) > 2 else f"u{t[0]}"
            nodes.append(helper.make_node("Mul", [prev, f"u{t[-1]}"], [out]))
        names.append(out)
    nodes += [
        helper.make_node("Concat", names, ["phi"], axis=1),
        helper.make_node("MatMul", ["phi", "W"], ["phi_w"]),
        helper.make_node("Add", ["phi_w", "b"], ["y_hat"]),
        helper.make_node("Sub", ["y", "y_hat"], ["r_raw"]),
    ]
    if model.gate is None:
        nodes.append(helper.make_node("Identity", ["r_raw"], ["r"]))
    else:
        inits += [const("gate_idx", [model.gate], np.int64), const("gate_gain", model.gate_gain),
                  const("one", 1.0)]
        nodes += [
            helper.make_node("Gather", [input_name, "gate_idx"], ["g"], axis=1),
            helper.make_node("Mul", ["g", "g"], ["g2"]),
            helper.make_node("Mul", ["g2", "gate_gain"], ["ag2"]),
            helper.make_node("Add", ["ag2", "one"], ["width2"]),
            helper.make_node("Sqrt", ["width2"], ["width"]),
            helper.make_node("Div", ["r_raw", "width"], ["r"]),
        ]
    f = model.n_features
    front = helper.make_model(
        helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", f])],
            [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["batch", len(model.targets)])],
            initializer=inits,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    front.ir_version = IR_VERSION
    back = compose.add_prefix(pca_to_onnx(model.pca, input_name="r", name=name), "pca_")
    merged = compose.merge_models(front, back, io_map=[("r", "pca_r")], name=name)
    # the outputs keep their contract names
    for node in merged.graph.node:
        node.output[:] = [{"pca_t2": "t2", "pca_spe": "spe"}.get(o, o) for o in node.output]
    for out in merged.graph.output:
        out.name = {"pca_t2": "t2", "pca_spe": "spe"}.get(out.name, out.name)
    merged.producer_name = "edge-inference-agent export.conditioned"
    merged.doc_string = (
        f"operating-point-conditioned monitoring: {f} features, {p} operating regressors, "
        f"{len(model.terms)} polynomial terms, {model.n_components} residual components; outputs T^2 and SPE"
    )
    merged.ir_version = IR_VERSION
    onnx.checker.check_model(merged, full_check=True)
    return merged
