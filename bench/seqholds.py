"""Which input raises seq-pump's remaining alerts during the agent's holds and after the PLC's
take-back (models/README.md, seq-pump: "What raises v5's remaining alerts"). A diagnosis: no
model is changed or trained.

Run ``python -m bench.seqholds [--bundle models/seq-pump] [--shift-days 111 112 119 120]``.
Each validation load-shift day (``python -m bench.loadshift``, 24 h) is replayed through the
agent's pipeline as ``bench/seqcalib.py`` does (70 s on-delay, ``bad_input: hold`` an hour, the
bundle's own threshold, no fast level) for its alerts; the same frames (the replay's framing:
``held_series``, ``ewma_rows``, ``sliding_windows``) are scored again by the bundle's graph with
its per-term tensor exposed as an output (the ``Concat`` before ``ReduceMax``: per member the
reconstruction, roughness and level terms of every monitored role, ``export/sequence.py``
``FusedVote``). The score is the min over members of each one's largest term over its scale,
so the term that sets it is the largest term of the member with the lower score; the script
checks that this recomputed score equals the replay's.

Events: every alert, and every run of frames above ``--near`` (0.8) x the threshold whose first
and last frame are at least the on-delay (70 s) apart. Per event, at its highest frame: the
deciding term (role and kind) and the other member's largest, the pump's speed, flow and
speed_history (its 30 min ewma) at the window's end, the other pump's speed, the last change
before it (the agent's move or the PLC's take-back, ``shift_schedule``), minutes since it, what
was commanded and what the PLC ran after the take-back. Then, on the training days
(``--train``: shift-s1..s6, normal-s1..s3, 48 h each), the hours each pump spent in that event's
operating region (speed within ``--speed-band`` rpm and flow within ``--flow-band`` m3/h of the
event's); of those the hours settled there (speed_history also within the speed band: held about
half an hour or more), settled with the other pump within the speed band of its speed, and with
the same history (speed_history within the speed band of the event's). ``--at DAY:ASSET:HOURS``
keeps only the events holding that time (to read one alert of another run's days without reading
the rest). Beside them the pump-hours of the training and validation days in the two
situations the events fall in (:func:`coverage`) and how often ``shift_schedule`` draws such a
hold (:func:`schedule_share`). Prints the events and writes ``build/holds/seqholds.json``.
Reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if p and Path(p).resolve() not in (ROOT, ROOT / "bench")]

from bench import operating_point as op  # noqa: E402

REC = ROOT / "build" / "recordings"
SHIFT_DAYS = (111, 112, 119, 120)
TRAIN = (*(f"shift-s{s}.csv" for s in range(1, 7)), *(f"normal-s{s}.csv" for s in range(1, 4)))
TERMS_OUTPUT = "/Concat_3_output_0"  # FusedVote's terms [B, members, 3 M], before ReduceMax
LEVEL_OUTPUT = "/ReduceMean_4_output_0"  # FusedVote's level [B, members x M]: mean of (recon - mon) / sd
KINDS = ("rec", "rough", "level")

__all__ = ["events", "main", "term_session"]


def term_session(model: Path) -> tuple[object, np.ndarray]:
    """An onnxruntime session of ``model`` with its per-term tensor and its mean standardised
    errors (the level's sign: positive, the role reads below its reconstruction) as further
    outputs, and the members' scales (the graph's ``scales`` initializer)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    m = onnx.load(str(model))
    scales = next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == "scales")
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(TERMS_OUTPUT))
    m.graph.output.append(onnx.helper.make_empty_tensor_value_info(LEVEL_OUTPUT))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess, np.asarray(scales, dtype=np.float64)


def events(
    t: np.ndarray, score: np.ndarray, level: float, min_s: float, gap_s: float
) -> list[tuple[int, int]]:
    """Runs ``(first, last)`` (indices into frames at times ``t``) of consecutive frames (no gap
    longer than ``gap_s``) with ``score`` above ``level``, lasting at least ``min_s`` first to last."""
    out: list[tuple[int, int]] = []
    start = None
    for i in range(len(t)):
        above = score[i] > level
        if above and start is not None and t[i] - t[i - 1] > gap_s:
            if t[i - 1] - t[start] >= min_s:
                out.append((start, i - 1))
            start = None
        if above and start is None:
            start = i
        elif not above and start is not None:
            if t[i - 1] - t[start] >= min_s:
                out.append((start, i - 1))
            start = None
    if start is not None and t[-1] - t[start] >= min_s:
        out.append((start, len(t) - 1))
    return out


def _frames(rec: object, setup: object, sess: object) -> dict[str, dict[str, np.ndarray]]:
    """Per asset, the replay's frames: row, raw window end (roles in manifest order) and terms."""
    from agent.pipeline.features import ewma_rows, sliding_windows, window_to_input
    from agent.replay import _model_step, _tick_rows, _ticks, held_series

    binding, bundle = setup.models[0]  # type: ignore[attr-defined]
    m = bundle.manifest
    good = rec.good if rec.good is not None else np.isfinite(rec.values)  # type: ignore[attr-defined]
    step = _model_step(bundle, rec.period_s)  # type: ignore[attr-defined]
    ticks = _ticks(rec, bundle, step)  # type: ignore[arg-type]
    out: dict[str, dict[str, np.ndarray]] = {}
    for asset, roles in binding.assets.items():
        cols = np.array([rec.column(roles[r]) for r in m.roles], dtype=np.int64)  # type: ignore[attr-defined]
        held = held_series(*_tick_rows(rec, good, ticks, cols, m, step), m, binding.hold_limit)  # type: ignore[arg-type]
        held = ewma_rows(held, m.inputs, m.window.sample_period_s)
        view = sliding_windows(held, m.window.length, m.window.stride)
        ok = np.isfinite(view).all(axis=(1, 2))
        rows = ticks[m.window.length - 1 :: m.window.stride][: len(view)][ok]
        idx = np.flatnonzero(ok)
        scores, terms, levels = [], [], []
        for lo in range(0, len(idx), 4096):
            x = window_to_input(view[idx[lo : lo + 4096]], m).astype(np.float32)
            s, tt, lv = sess.run(None, {m.model_input.name: x})  # type: ignore[attr-defined]
            scores.append(s)
            terms.append(tt)
            levels.append(lv)
        out[asset] = {
            "rows": rows,
            "end": view[idx, -1, :],
            "score": np.concatenate(scores).astype(np.float64),
            "terms": np.concatenate(terms).astype(np.float64),
            "level": np.concatenate(levels).astype(np.float64),
        }
    return out


def _term_names(manifest: object) -> list[str]:
    mon = [r.role for r in manifest.inputs if not r.operating]  # type: ignore[attr-defined]
    return [f"{r} {k}" for k in KINDS for r in mon]


def _region_hours(
    train: Sequence[dict[str, np.ndarray]],
    speed: float,
    flow: float,
    other: float,
    hist: float,
    sb: float,
    fb: float,
) -> tuple[float, float, float, float]:
    """Pump-hours over the training days within the bands; of those settled there (speed_history
    in the speed band too); of those with the other pump within the speed band of ``other``; and
    within the bands with speed_history within the speed band of ``hist`` (the same history)."""
    near = settled = pair = same = 0.0
    for d in train:
        h = d["period"][0] / 3600.0
        box = (np.abs(d["speed"] - speed) <= sb) & (np.abs(d["flow"] - flow) <= fb)
        held = box & (np.abs(d["hist"] - speed) <= sb)
        near += float(box.sum()) * h
        settled += float(held.sum()) * h
        pair += float((held & (np.abs(d["other"] - other) <= sb)).sum()) * h
        same += float((box & (np.abs(d["hist"] - hist) <= sb)).sum()) * h
    return near, settled, pair, same


def _training(
    bundle: object, cols: dict[str, dict[str, str]], names: Sequence[str], rec_dir: Path = REC
) -> list[dict[str, np.ndarray]]:
    """Per training day and pump: speed, flow and speed_history every 10 s (ewma at 1 s)."""
    from agent.pipeline.features import ewma_rows
    from export.evaluate import load_recording

    m = bundle.manifest  # type: ignore[attr-defined]
    roles = ["speed", "flow", "speed_history"]
    ins = [next(r for r in m.inputs if r.role == n) for n in roles]
    out: list[dict[str, np.ndarray]] = []
    for name in names:
        tags = sorted({cols[a][r] for a in cols for r in roles})
        rec = load_recording([rec_dir / name], tags, 1.0)
        xs = {
            a: ewma_rows(np.stack([rec.values[:, rec.column(cols[a][r])] for r in roles], axis=1), ins, 1.0)[
                ::10
            ]
            for a in cols
        }
        for a, x in xs.items():
            other = next(v for b, v in xs.items() if b != a)
            out.append({
                "speed": x[:, 0], "flow": x[:, 1], "hist": x[:, 2], "other": other[:, 0],
                "period": np.array([10.0]),
            })  # fmt: skip
        print(f"  read {name}", flush=True)
    return out


def coverage(days: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Pump-hours of ``days`` (:func:`_training`'s arrays) in the two situations the events fall
    in (models/README.md): a pump settled at 1,800-1,950 rpm carrying flow (> 20 m3/h) beside the
    other at <= 1,600 rpm; a pump at >= 2,900 rpm, and of that with speed_history <= 2,300 rpm."""
    h = {"pump_h": 0.0, "carrier_1800_1950_beside_le1600": 0.0, "ge2900": 0.0, "ge2900_history_le2300": 0.0}
    for d in days:
        w = d["period"][0] / 3600.0
        settled = np.abs(d["hist"] - d["speed"]) <= 100.0
        carrier = (d["speed"] >= 1800.0) & (d["speed"] <= 1950.0) & settled & (d["other"] <= 1600.0)
        top = d["speed"] >= 2900.0
        h["pump_h"] += len(d["speed"]) * w
        h["carrier_1800_1950_beside_le1600"] += float((carrier & (d["flow"] > 20.0)).sum()) * w
        h["ge2900"] += float(top.sum()) * w
        h["ge2900_history_le2300"] += float((top & (d["hist"] <= 2300.0)).sum()) * w
    return {k: round(v, 2) for k, v in h.items()}


def schedule_share(seeds: Sequence[int], hours: float) -> tuple[int, int]:
    """Of the moves ``shift_schedule`` draws for ``seeds``: how many put one pump <= 1,950 rpm
    beside the other <= 1,600 rpm, and how many moves in all."""
    from bench.loadshift import shift_schedule

    n = total = 0
    for seed in seeds:
        for sh in shift_schedule(seed, hours):
            if sh.speeds is None:
                continue
            total += 1
            v = sorted(sh.speeds.values())
            n += len(v) == 2 and v[1] <= 1950.0 and v[0] <= 1600.0
    return n, total


def main(argv: Sequence[str] | None = None) -> int:
    from bench.loadshift import shift_schedule
    from export.evaluate import Labels, derived_setup, load_recording

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "seq-pump")
    ap.add_argument("--recordings", type=Path, default=REC)
    ap.add_argument("--shift-days", type=int, nargs="+", default=list(SHIFT_DAYS))
    ap.add_argument("--near", type=float, default=0.8, help="events: frames above NEAR x the threshold")
    ap.add_argument("--train", nargs="*", default=list(TRAIN), help="training recordings in build/recordings")
    ap.add_argument("--speed-band", type=float, default=100.0, help="rpm either side")
    ap.add_argument("--flow-band", type=float, default=10.0, help="m3/h either side")
    ap.add_argument(
        "--at", nargs="*", default=[], help="DAY:ASSET:HOURS: keep only the events that hold this time"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "holds" / "seqholds.json")
    args = ap.parse_args(argv)

    from agent.modelstore.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    known = op._role_columns()
    known_ok = all(r in c for c in known.values() for r in bundle.manifest.roles)
    setup = derived_setup(
        bundle, known if known_ok else None, on_delay_s=op.SEQ_ON_DELAY_S, hold_cycles=op.HOLD_CYCLES
    )
    (thr,) = [d.high.value for d in setup.alarms.defs if d.high is not None]  # type: ignore[attr-defined]
    cols: dict[str, dict[str, str]] = dict(setup.models[0][0].assets)  # type: ignore[attr-defined]
    tags = sorted({t for bb, _ in setup.models for c in bb.assets.values() for t in c.values()})
    sess, scales = term_session(args.bundle / "model.onnx")
    names = _term_names(bundle.manifest)
    n_mon = len(names) // len(KINDS)
    roles = bundle.manifest.roles
    i_speed, i_flow, i_hist = (roles.index(r) for r in ("speed", "flow", "speed_history"))
    epoch = op.StationParams().epoch_datetime.timestamp()
    found: list[dict[str, object]] = []
    keep = [(int(d), a, float(h)) for d, a, h in (x.split(":") for x in args.at)]
    for seed in args.shift_days:
        path = args.recordings / f"shift-s{seed}.csv"
        shifts = shift_schedule(seed, 24.0)
        res = op._evaluate(setup, tags, path, Labels())
        raised = op.raised_s(res)
        rec = load_recording([path], tags, 1.0)
        frames = _frames(rec, setup, sess)
        plc_cols = {a: rec.column(cols[a]["speed"]) for a in cols}
        flow_cols = {a: rec.column(cols[a]["flow"]) for a in cols}
        for asset, f in frames.items():
            t = rec.t[f["rows"]] - epoch
            member = f["terms"].max(axis=2) / scales  # [F, members]
            score = member.min(axis=1)
            err = float(np.max(np.abs(score - f["score"])))
            if err > 1e-4 * max(1.0, float(np.max(f["score"]))):
                raise RuntimeError(
                    f"day {seed} {asset}: the recomputed score differs from the graph's by {err}"
                )
            other = next(a for a in frames if a != asset)
            for lo, hi in events(
                t, score, args.near * thr, op.SEQ_ON_DELAY_S, 1.5 * bundle.manifest.window.stride
            ):
                k = lo + int(np.argmax(score[lo : hi + 1]))
                dec = int(np.argmin(member[k]))
                oth = 1 - dec
                terms = f["terms"][k] / scales[:, None]
                top = int(np.argmax(terms[dec]))
                top_o = int(np.argmax(terms[oth]))
                before = [s for s in shifts if s.at_s <= t[lo]]
                last = before[-1] if before else None
                pump = int(asset.removeprefix("Pump"))
                move = None if last is None else last.speeds
                alert = [r for a, r in raised if a == asset and t[lo] - 10 <= r <= t[hi] + op.SEQ_ON_DELAY_S]
                row_k = int(f["rows"][k])
                ev = {
                    "day": seed, "asset": asset, "t_h": round(float(t[k]) / 3600, 3),
                    "start_h": round(float(t[lo]) / 3600, 3), "dur_min": round(float(t[hi] - t[lo]) / 60, 1),
                    "peak": round(float(score[k]), 3), "peak_x_thr": round(float(score[k]) / thr, 2),
                    "alert": bool(alert), "alert_h": [round(r / 3600, 3) for r in alert],
                    "term": names[top], "term_value": round(float(terms[dec, top]), 3),
                    "reads": "below" if f["level"][k, dec * n_mon + top % n_mon] > 0 else "above",
                    "second_term": names[int(np.argsort(terms[dec])[-2])],
                    "other_member_term": names[top_o],
                    "other_member_value": round(float(terms[oth, top_o]), 3),
                    "speed": round(float(f["end"][k, i_speed]), 1),
                    "flow": round(float(f["end"][k, i_flow]), 1),
                    "speed_history": round(float(f["end"][k, i_hist]), 1),
                    "other_speed": round(float(rec.values[row_k, plc_cols[other]]), 1),
                    "other_flow": round(float(rec.values[row_k, flow_cols[other]]), 1),
                    "change": None if last is None else ("move" if move is not None else "take-back"),
                    "since_change_min": None if last is None else round((float(t[k]) - last.at_s) / 60, 1),
                    "commanded": None if move is None else {f"Pump{p}": round(v) for p, v in move.items()},
                    "pump_moved": None if move is None else pump in move,
                }  # fmt: skip
                if last is not None and move is None:
                    # what the PLC ran after taking the pumps back: the speed 5 min on, and at the frame
                    r5 = int(np.searchsorted(rec.t - epoch, last.at_s + 300.0))
                    ev["plc_speed_5min"] = round(float(rec.values[r5, plc_cols[asset]]), 1)
                    ev["plc_other_5min"] = round(float(rec.values[r5, plc_cols[other]]), 1)
                    prev = [s for s in shifts if s.at_s < last.at_s and s.speeds is not None]
                    if prev:
                        ev["held_before"] = {f"Pump{p}": round(v) for p, v in prev[-1].speeds.items()}
                found.append(ev)
        if keep:
            found = [
                e for e in found
                if any(
                    e["day"] == d and e["asset"] == a
                    and float(e["start_h"]) <= h <= float(e["start_h"]) + (float(e["dur_min"]) + 2.0) / 60  # type: ignore[arg-type]
                    for d, a, h in keep
                )
            ]  # fmt: skip
        print(f"day {seed}: {sum(1 for e in found if e['day'] == seed)} events", flush=True)
    summary: dict[str, object] = {}
    if args.train:
        train = _training(bundle, cols, args.train)
        summary["train_coverage"] = coverage(train)
        if not args.at:
            days = [f"shift-s{d}.csv" for d in args.shift_days]
            summary["validation_coverage"] = coverage(_training(bundle, cols, days, args.recordings))
            summary["moves_validation"] = schedule_share(args.shift_days, 24.0)
        summary["moves_train"] = schedule_share(range(1, 7), 48.0)
        summary["moves_draws_2000_2999"] = schedule_share(range(2000, 3000), 48.0)
        print(f"coverage (pump-hours) and moves (such a pair, all): {json.dumps(summary)}")
        for ev in found:
            op_point = (float(ev[k]) for k in ("speed", "flow", "other_speed", "speed_history"))  # type: ignore[arg-type]
            near, settled, pair, same = _region_hours(train, *op_point, args.speed_band, args.flow_band)
            ev["train_pump_h_same_history"] = round(same, 2)
            ev["train_pump_h_near"] = round(near, 2)
            ev["train_pump_h_settled"] = round(settled, 2)
            ev["train_pump_h_settled_pair"] = round(pair, 2)
    print(f"threshold {thr:.4f}; events: frames above {args.near:g}x it for >= {op.SEQ_ON_DELAY_S:g} s")
    for ev in sorted(found, key=lambda e: (e["day"], e["t_h"])):  # type: ignore[arg-type,return-value]
        print(json.dumps(ev))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"threshold": thr, "near": args.near, "events": found, **summary}, indent=2, default=str)
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
