"""The on-box self-test of a bundle, run in a subprocess: ``python -m agent.modelstore.selftest DIR``.

An onnxruntime built for a newer CPU can die on an illegal instruction (SIGILL) while it loads
or runs a model; in a subprocess that is a refused install, not a dead agent. The child:

1. records the CPU (``/proc/cpuinfo`` flags, or ``Features`` on aarch64);
2. loads every variant (hashes and session contract checked by
   :func:`~agent.modelstore.bundle.load_bundle`) and runs it on the manifest's ``checks``,
   each output compared to the expected one (``|got - want| <= tolerance * (1 + |want|)``);
   a bundle without checks is run on windows drawn uniformly from the manifest's plausible
   ranges and turned into model inputs by the one feature function
   (:func:`~agent.pipeline.features.window_to_input`), its outputs required finite;
3. re-runs the INT8 agreement gate on this CPU. A bundle that carries it (schema 2,
   ``manifest.agreement``) has it re-run as the export ran it: an INT8 (or FP16) variant's
   outputs on the ``checks`` inputs (real windows) against their expected FP32 outputs, top-1
   agreement or correlation at the manifest's ``minimum`` (the tolerance comparison is for FP32
   only: quantization error is what the gate bounds). Without it, every output of a
   reduced-precision variant must correlate with the FP32 variant's at
   :data:`AGREEMENT_MIN_CORR` or better on the random inputs (per-channel S8S8 on CPUs without
   VNNI has been seen at 0.982). A variant that fails is refused; FP32 stays;
4. benchmarks every variant that passed (median of batch-1 calls) and keeps the fastest.

It prints one JSON document (:class:`SelfTestReport` fields) and exits 0 when a variant was
chosen, 1 otherwise. :func:`run_selftest` is the parent side: it turns a crash (a signal), a
timeout or a failure into a :class:`~agent.errors.ModelError` naming the cause.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ModelError

__all__ = [
    "AGREEMENT_MIN_CORR",
    "CRASH_HOOK_ENV",
    "SelfTestReport",
    "VariantResult",
    "agreement",
    "cpu_flags",
    "main",
    "run_selftest",
]

AGREEMENT_MIN_CORR = 0.99
CRASH_HOOK_ENV = "EDGE_AGENT_SELFTEST_CRASH"
"""Test seam: a signal name (``SIGILL``) the child sends itself once onnxruntime is loaded, as an
onnxruntime built for another CPU would die."""
_RANDOM_WINDOWS = 64
_BENCH_S = 0.2
_TIMEOUT_S = 120.0


@dataclass
class VariantResult:
    """One variant's outcome on this box."""

    file: str
    precision: str
    ok: bool
    error: str = ""
    latency_us: float | None = None


@dataclass
class SelfTestReport:
    """What the self-test found; ``chosen`` is the fastest variant that passed (None: none)."""

    arch: str
    cpu_flags: list[str]
    checks: int
    fingerprint: str = ""
    variants: list[VariantResult] = field(default_factory=list)
    chosen: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SelfTestReport:
        report = cls(
            str(data["arch"]), list(data["cpu_flags"]), int(data["checks"]), str(data["fingerprint"])
        )
        report.variants = [VariantResult(**v) for v in data["variants"]]
        report.chosen = data.get("chosen")
        return report

    def summary(self) -> str:
        parts = []
        for v in self.variants:
            state = f"{v.latency_us:.1f} us" if v.ok and v.latency_us is not None else f"FAILED: {v.error}"
            parts.append(f"{v.file} ({v.precision}) {state}")
        return "; ".join(parts)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The CPU feature flags of this machine (x86 ``flags``, aarch64 ``Features``), sorted."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(set(value.split()))
    return []


def _compare(got: Any, want: Any, tol: float) -> str | None:
    import numpy as np

    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return f"shape {list(g.shape)}, expected {list(w.shape)}"
    err = np.abs(g - w) - tol * (1 + np.abs(w))
    if not np.all(np.isfinite(g)) or np.any(err > 0):
        i = int(np.argmax(np.where(np.isfinite(g), err, np.inf)))
        return f"value {g.flat[i]:.6g}, expected {w.flat[i]:.6g} (tolerance {tol:g})"
    return None


def agreement(kind: str, expected: Any, got: Any) -> float:
    """How well ``got`` agrees with ``expected``: ``top1`` the share of rows ``[N, C]`` with the
    same arg-max, ``correlation`` the Pearson correlation of all values (1 when both are
    constant and equal, 0 when one is constant and they differ). The INT8 gate's measure, at
    export (:mod:`export.gates`) and on the gateway."""
    import numpy as np

    a = np.asarray(expected, np.float64)
    b = np.asarray(got, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {list(b.shape)}, expected {list(a.shape)}")
    if kind == "top1":
        return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    if kind == "correlation":
        fa, fb = a.reshape(-1), b.reshape(-1)
        if not (np.all(np.isfinite(fb)) and np.all(np.isfinite(fa))):
            return 0.0
        if np.std(fa) == 0 or np.std(fb) == 0:
            return 1.0 if np.allclose(fa, fb) else 0.0
        return float(np.corrcoef(fa, fb)[0, 1])
    raise ValueError(f"unknown agreement kind {kind!r}")


def _agreement_gates(manifest: Any, got: list[Any]) -> None:
    """Raise ModelError when a variant's outputs on the checks miss an agreement gate."""
    import numpy as np

    names = [o.name for o in manifest.outputs]
    for gate in manifest.agreement:
        k = names.index(gate.output)
        want = np.concatenate([np.asarray(c.outputs[gate.output], np.float64) for c in manifest.checks])
        have = np.concatenate([np.asarray(g[k], np.float64) for g in got])
        value = agreement(gate.kind, want, have)
        if not value >= gate.minimum:
            what = "top-1 agreement" if gate.kind == "top1" else "correlation"
            raise ModelError(
                f"INT8 agreement gate fails on this CPU: {what} of {gate.output} with the expected "
                f"FP32 outputs {value:.4f} < {gate.minimum:g} on {len(want)} check inputs"
            )


def _random_inputs(manifest: Any) -> Any:
    import numpy as np

    from agent.pipeline.features import window_to_input

    rng = np.random.default_rng(0)
    lo = np.array([r.range[0] for r in manifest.inputs])
    hi = np.array([r.range[1] for r in manifest.inputs])
    raw = rng.uniform(lo, hi, size=(_RANDOM_WINDOWS, manifest.window.length, len(manifest.inputs)))
    return window_to_input(raw, manifest)


def _bench(bundle: Any, x: Any) -> float:
    feeds = {bundle.manifest.model_input.name: x[:1]}
    times: list[float] = []
    deadline = time.perf_counter() + _BENCH_S
    while len(times) < 20 or (time.perf_counter() < deadline and len(times) < 2000):
        t0 = time.perf_counter()
        bundle.run(feeds)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6


def selftest(
    bundle_dir: Path, trusted_keys: list[str] | None = None, allow_unsigned: bool = False
) -> SelfTestReport:
    """Run the self-test in this process (the child's work; see the module docstring). The
    first load checks every hash and the signature against ``trusted_keys``; ModelError when
    it fails (nothing else is tried)."""
    import numpy as np

    from agent.modelstore.bundle import load_bundle

    first = load_bundle(
        bundle_dir, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, keep_checks=True
    )
    manifest = first.manifest
    crash = os.environ.get(CRASH_HOOK_ENV)
    if crash:
        os.kill(os.getpid(), signal.Signals[crash])
    report = SelfTestReport(platform.machine(), cpu_flags(), len(manifest.checks), first.fingerprint)
    dtype = np.float64 if manifest.model_input.dtype == "float64" else np.float32
    random_x = _random_inputs(manifest).astype(dtype)
    outputs: dict[str, list[Any]] = {}
    for v in manifest.variants:
        res = VariantResult(v.file, v.precision, ok=False)
        report.variants.append(res)
        try:
            b = load_bundle(bundle_dir, variant=v.file)
            gated = bool(manifest.agreement) and v.precision != "fp32"
            got_all = []
            for i, check in enumerate(manifest.checks):
                got = b.run({manifest.model_input.name: np.asarray(check.inputs, dtype=dtype)})
                got_all.append(got)
                for o, arr in zip(manifest.outputs, got, strict=True):
                    if o.name in check.outputs and not gated:
                        why = _compare(arr, check.outputs[o.name], check.tolerance)
                        if why is not None:
                            raise ModelError(f"check {i} output {o.name}: {why}")
            if gated:
                _agreement_gates(manifest, got_all)
            outputs[v.file] = b.run({manifest.model_input.name: random_x})
            for o, arr in zip(manifest.outputs, outputs[v.file], strict=True):
                if not np.all(np.isfinite(np.asarray(arr, dtype=np.float64))):
                    raise ModelError(f"output {o.name} is not finite on inputs drawn from the ranges")
            res.latency_us = _bench(b, random_x)
            res.ok = True
        except (ModelError, ValueError) as exc:
            res.error = str(exc).splitlines()[0]
    reference = next((r for r in report.variants if r.ok and r.precision == "fp32"), None)
    for r in report.variants:
        # a variant judged by the manifest's agreement gate on real windows is not judged again
        # on the random ones: those lie outside what the INT8 ranges were calibrated on
        if reference is None or not r.ok or r is reference or (manifest.agreement and r.precision != "fp32"):
            continue
        for o, a, b2 in zip(manifest.outputs, outputs[reference.file], outputs[r.file], strict=True):
            fa, fb = np.asarray(a, np.float64).ravel(), np.asarray(b2, np.float64).ravel()
            if np.std(fa) > 0 and np.std(fb) > 0:
                corr = float(np.corrcoef(fa, fb)[0, 1])
            else:
                corr = 1.0 if np.allclose(fa, fb, rtol=1e-2, atol=1e-3) else 0.0
            if not corr >= AGREEMENT_MIN_CORR:
                r.ok = False
                r.error = (
                    f"disagrees with {reference.file} on this CPU: output {o.name} correlation "
                    f"{corr:.4f} < {AGREEMENT_MIN_CORR}"
                )
                break
    passed = [r for r in report.variants if r.ok and r.latency_us is not None]
    if passed:
        report.chosen = min(passed, key=lambda r: r.latency_us or 0.0).file
    return report


def run_selftest(
    bundle_dir: Path,
    *,
    trusted_keys: Sequence[str | os.PathLike[str]] | None,
    allow_unsigned: bool = False,
    timeout_s: float = _TIMEOUT_S,
    label: str | None = None,
) -> SelfTestReport:
    """Run the self-test of ``bundle_dir`` in a child process (hashes and signature checked
    there again, against ``trusted_keys``); return its report when a variant passed.
    ModelError when the child crashed (by signal: named), timed out, refused the bundle, or
    no variant passed (each variant's reason). ``label`` names the bundle in messages (default:
    its directory)."""
    what = label or str(bundle_dir)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "agent.modelstore.selftest", str(bundle_dir)]
    for k in trusted_keys or []:
        cmd += ["--trusted-key", str(Path(k).resolve())]
    if allow_unsigned or trusted_keys is None:
        cmd.append("--allow-unsigned")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ModelError(f"self-test of {what} did not finish in {timeout_s:g} s") from None
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise ModelError(
            f"self-test of {what} crashed with {sig}: onnxruntime cannot run this model on this CPU"
        )
    try:
        data = json.loads(proc.stdout)
        if "refused" in data:
            raise ModelError(str(data["refused"]))
        report = SelfTestReport.from_json(data)
    except (ValueError, KeyError, TypeError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"self-test of {what} failed (exit {proc.returncode}): {tail}") from None
    if report.chosen is None:
        raise ModelError(f"self-test of {what}: no variant passed: {report.summary()}")
    return report


def main(argv: list[str] | None = None) -> int:
    """The child: self-test one bundle directory; JSON on stdout (``{"refused": why}`` when
    the bundle itself is refused)."""
    p = argparse.ArgumentParser(prog="python -m agent.modelstore.selftest")
    p.add_argument("bundle", type=Path)
    p.add_argument("--trusted-key", action="append", default=[])
    p.add_argument("--allow-unsigned", action="store_true")
    args = p.parse_args(argv)
    try:
        report = selftest(args.bundle, args.trusted_key, args.allow_unsigned)
    except ModelError as exc:
        print(json.dumps({"refused": str(exc)}))
        return 1
    print(json.dumps(asdict(report)))
    return 0 if report.chosen is not None else 1


if __name__ == "__main__":
    sys.exit(main())
