"""Classical anomaly detectors as small ONNX graphs (numpy only: no scikit-learn).

* **Isolation Forest** (Liu, Ting, Zhou 2008): ``n_trees`` random trees on subsamples of
  ``psi`` rows, depth-limited to ``ceil(log2 psi)``; a leaf's value is its depth plus
  ``c(leaf size)``, the expected path length still to go in an unbuilt subtree, so the whole
  forest is ONE ``ai.onnx.ml`` TreeEnsembleRegressor averaging path lengths, followed by
  ``score = 2^(-E[h] / c(psi))``. skl2onnx's graph for the same model (one tree op per tree
  plus the path arithmetic) takes about 1.4 ms a call; this one about 20-30 us (FIELD.md).
* **Local Outlier Factor** (Breunig et al. 2000) against a reference sample of normal
  windows: the graph computes distances to every reference point, TopK, and
  ``LOF(x) = mean(lrd(o)) * mean(reach_dist(x, o))`` over the k neighbours, with the
  reference points' k-distances and local reachability densities precomputed.
* **k-nearest-neighbour distance**: mean distance to the k nearest reference points.

Every graph standardises its input features first (``(x - mean) / scale`` from the fitting
data) and outputs ``score[batch]``, higher = more anomalous. Each class has a numpy
``score`` that is the reference the ONNX graph is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["IsolationForest", "KnnDistance", "LocalOutlierFactor", "c_factor"]

FloatArray = npt.NDArray[np.float64]
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8


def c_factor(n: npt.ArrayLike) -> FloatArray:
    """Average path length of an unsuccessful BST search among n points (0 for n <= 1)."""
    n = np.asarray(n, np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    out[n == 2] = 1.0
    return out


def _standardise(x: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    xf = np.asarray(x, np.float64)
    # Features are already in role-normalised units: a feature that barely moves in training
    # (1e-3 sigma) must not turn round-off into an outlier.
    return xf.mean(axis=0), np.maximum(xf.std(axis=0), 1e-3)


def _model(
    nodes: list[onnx.NodeProto], inits: list[TensorProto], n_features: int, name: str, ml: bool = False
) -> bytes:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    if ml:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="edge-export")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _f32(name: str, value: npt.ArrayLike) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _std_nodes(mean: FloatArray, scale: FloatArray) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    return (
        [helper.make_node("Sub", ["x", "mean"], ["xc"]), helper.make_node("Mul", ["xc", "inv_scale"], ["z"])],
        [_f32("mean", mean), _f32("inv_scale", 1.0 / scale)],
    )


# --------------------------------------------------------------------------- Isolation Forest


@dataclass
class _Tree:
    feature: list[int]
    threshold: list[float]  # float32-representable: x < threshold goes left
    left: list[int]
    right: list[int]
    value: list[float]  # leaves: depth + c(size); -1 marks a split node


@dataclass
class IsolationForest:
    mean: FloatArray
    scale: FloatArray
    trees: list[_Tree]
    psi: int

    @classmethod
    def fit(cls, x: npt.ArrayLike, *, n_trees: int = 100, psi: int = 256, seed: int = 0) -> IsolationForest:
        mean, scale = _standardise(x)
        z = ((np.asarray(x, np.float64) - mean) / scale).astype(np.float32)
        rng = np.random.default_rng(seed)
        psi = min(psi, len(z))
        limit = math.ceil(math.log2(max(psi, 2)))
        trees = []
        for _ in range(n_trees):
            sample = z[rng.choice(len(z), psi, replace=False)]
            t = _Tree([], [], [], [], [])

            def grow(rows: np.ndarray, depth: int, t: _Tree = t) -> int:
                node = len(t.value)
                t.feature.append(0)
                t.threshold.append(0.0)
                t.left.append(-1)
                t.right.append(-1)
                t.value.append(-1.0)
                lo, hi = rows.min(axis=0), rows.max(axis=0)
                usable = np.nonzero(hi > lo)[0]
                if depth >= limit or len(rows) <= 1 or not len(usable):
                    t.value[node] = depth + float(c_factor(len(rows)))
                    return node
                f = int(rng.choice(usable))
                split = np.float32(rng.uniform(lo[f], hi[f]))
                if not lo[f] < split <= hi[f]:
                    split = hi[f]
                go_left = rows[:, f] < split
                t.feature[node] = f
                t.threshold[node] = float(split)
                t.left[node] = grow(rows[go_left], depth + 1)
                t.right[node] = grow(rows[~go_left], depth + 1)
                return node

            grow(sample, 0)
            trees.append(t)
        return cls(mean, scale, trees, psi)

    def path_lengths(self, x: npt.ArrayLike) -> FloatArray:
        z = ((np.asarray(x, np.float64) - self.mean) / self.scale).astype(np.float32)
        total = np.zeros(len(z))
        for t in self.trees:
            node = np.zeros(len(z), np.int64)
            feat = np.array(t.feature)
            thr = np.array(t.threshold, np.float32)
            left, right, value = np.array(t.left), np.array(t.right), np.array(t.value)
            active = value[node] < 0
            while active.any():
                n = node[active]
                go = z[active, feat[n]] < thr[n]
                node[active] = np.where(go, left[n], right[n])
                active = value[node] < 0
            total += value[node]
        return total / len(self.trees)

    def score(self, x: npt.ArrayLike) -> FloatArray:
        return np.power(2.0, -self.path_lengths(x) / float(c_factor(self.psi)))

    def to_onnx(self) -> bytes:
        attrs: dict[str, list[float] | list[int] | list[str]] = {
            k: []
            for k in (
                "nodes_treeids",
                "nodes_nodeids",
                "nodes_featureids",
                "nodes_values",
                "nodes_modes",
                "nodes_truenodeids",
                "nodes_falsenodeids",
                "target_treeids",
                "target_nodeids",
                "target_ids",
                "target_weights",
            )
        }
        for ti, t in enumerate(self.trees):
            for ni in range(len(t.value)):
                leaf = t.value[ni] >= 0
                attrs["nodes_treeids"].append(ti)  # type: ignore[arg-type]
                attrs["nodes_nodeids"].append(ni)  # type: ignore[arg-type]
                attrs["nodes_featureids"].append(t.feature[ni])  # type: ignore[arg-type]
                attrs["nodes_values"].append(t.threshold[ni])  # type: ignore[arg-type]
                attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LT")  # type: ignore[arg-type]
                attrs["nodes_truenodeids"].append(0 if leaf else t.left[ni])  # type: ignore[arg-type]
                attrs["nodes_falsenodeids"].append(0 if leaf else t.right[ni])  # type: ignore[arg-type]
                if leaf:
                    attrs["target_treeids"].append(ti)  # type: ignore[arg-type]
                    attrs["target_nodeids"].append(ni)  # type: ignore[arg-type]
                    attrs["target_ids"].append(0)  # type: ignore[arg-type]
                    attrs["target_weights"].append(t.value[ni])  # type: ignore[arg-type]
        nodes, inits = _std_nodes(self.mean, self.scale)
        nodes += [
            helper.make_node(
                "TreeEnsembleRegressor",
                ["z"],
                ["h"],
                domain="ai.onnx.ml",
                n_targets=1,
                aggregate_function="AVERAGE",
                post_transform="NONE",
                **attrs,
            ),
            helper.make_node("Mul", ["h", "neg_ln2_over_c"], ["e"]),
            helper.make_node("Exp", ["e"], ["s2"]),
            helper.make_node("Reshape", ["s2", "flat"], ["score"]),
        ]
        inits += [
            _f32("neg_ln2_over_c", -math.log(2.0) / float(c_factor(self.psi))),
            numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        ]
        return _model(nodes, inits, len(self.mean), "isolation_forest", ml=True)


# --------------------------------------------------------------------------- LOF and kNN


def _distances(a: FloatArray, b: FloatArray) -> FloatArray:
    d2 = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def _distance_nodes(ref: FloatArray) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    nodes = [
        helper.make_node("Mul", ["z", "z"], ["zz"]),
        helper.make_node("ReduceSum", ["zz", "axes1"], ["zn"], keepdims=1),
        helper.make_node("MatMul", ["z", "refT_m2"], ["cross"]),
        helper.make_node("Add", ["zn", "cross"], ["d2a"]),
        helper.make_node("Add", ["d2a", "ref_norm"], ["d2b"]),
        helper.make_node("Max", ["d2b", "zero"], ["d2"]),
        helper.make_node("Sqrt", ["d2"], ["dist"]),
        helper.make_node("TopK", ["dist", "k"], ["nn_d", "nn_i"], axis=1, largest=0, sorted=1),
    ]
    inits = [
        _f32("refT_m2", -2.0 * ref.T),
        _f32("ref_norm", (ref * ref).sum(1)[None, :]),
        _f32("zero", 0.0),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
    ]
    return nodes, inits


@dataclass
class KnnDistance:
    mean: FloatArray
    scale: FloatArray
    ref: FloatArray  # standardised reference points
    k: int

    @classmethod
    def fit(cls, x: npt.ArrayLike, *, k: int = 5, n_ref: int = 1000, seed: int = 0) -> KnnDistance:
        mean, scale = _standardise(x)
        z = (np.asarray(x, np.float64) - mean) / scale
        rng = np.random.default_rng(seed)
        ref = z[np.sort(rng.choice(len(z), min(n_ref, len(z)), replace=False))]
        return cls(mean, scale, ref, k)

    def score(self, x: npt.ArrayLike) -> FloatArray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        d = np.sort(_distances(z, self.ref), axis=1)[:, : self.k]
        return d.mean(axis=1)

    def to_onnx(self) -> bytes:
        nodes, inits = _std_nodes(self.mean, self.scale)
        dn, di = _distance_nodes(self.ref)
        nodes += [*dn, helper.make_node("ReduceMean", ["nn_d"], ["score"], axes=[1], keepdims=0)]
        inits += [*di, numpy_helper.from_array(np.array([self.k], np.int64), "k")]
        return _model(nodes, inits, len(self.mean), "knn_distance")


@dataclass
class LocalOutlierFactor:
    mean: FloatArray
    scale: FloatArray
    ref: FloatArray
    k: int
    k_distance: FloatArray  # per reference point
    lrd: FloatArray  # local reachability density per reference point

    @classmethod
    def fit(cls, x: npt.ArrayLike, *, k: int = 20, n_ref: int = 1000, seed: int = 0) -> LocalOutlierFactor:
        base = KnnDistance.fit(x, k=k, n_ref=n_ref, seed=seed)
        ref = base.ref
        d = _distances(ref, ref)
        np.fill_diagonal(d, np.inf)  # a reference point is not its own neighbour
        idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        nd = np.take_along_axis(d, idx, axis=1)
        kdist = nd[:, -1]
        reach = np.maximum(kdist[idx], nd)
        lrd = 1.0 / np.maximum(reach.mean(axis=1), 1e-12)
        return cls(base.mean, base.scale, ref, k, kdist, lrd)

    def score(self, x: npt.ArrayLike) -> FloatArray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        d = _distances(z, self.ref)
        idx = np.argsort(d, axis=1, kind="stable")[:, : self.k]
        nd = np.take_along_axis(d, idx, axis=1)
        reach = np.maximum(self.k_distance[idx], nd)
        return self.lrd[idx].mean(axis=1) * reach.mean(axis=1)

    def to_onnx(self) -> bytes:
        nodes, inits = _std_nodes(self.mean, self.scale)
        dn, di = _distance_nodes(self.ref)
        nodes += [
            *dn,
            helper.make_node("Gather", ["kdist", "nn_i"], ["nn_kdist"], axis=0),
            helper.make_node("Max", ["nn_kdist", "nn_d"], ["reach"]),
            helper.make_node("ReduceMean", ["reach"], ["reach_mean"], axes=[1], keepdims=0),
            helper.make_node("Gather", ["lrd", "nn_i"], ["nn_lrd"], axis=0),
            helper.make_node("ReduceMean", ["nn_lrd"], ["lrd_mean"], axes=[1], keepdims=0),
            helper.make_node("Mul", ["lrd_mean", "reach_mean"], ["score"]),
        ]
        inits += [
            *di,
            numpy_helper.from_array(np.array([self.k], np.int64), "k"),
            _f32("kdist", self.k_distance),
            _f32("lrd", self.lrd),
        ]
        return _model(nodes, inits, len(self.mean), "local_outlier_factor")
