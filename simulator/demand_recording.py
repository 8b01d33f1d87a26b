"""``python -m simulator.demand_recording --seed S --weeks W --out FILE``: a demand recording.

A wide recording CSV (``timestamp,Station.OutletFlow,Station.AmbientTemp``, one row a minute) of
the structured demand of :mod:`simulator.demand`, without running the pumps: training data for
``edge-export forecast``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from simulator.demand import DemandModel, DemandParams, write_recording

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the recording; returns the exit status."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m simulator.demand_recording", description=__doc__.split("\n\n")[0] if __doc__ else ""
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--weeks", type=float, default=12)
    ap.add_argument("--mean", type=float, default=120.0, help="mean demand, m3/h")
    ap.add_argument("--epoch", default="2024-01-01T00:00:00+00:00", help="start (ISO 8601)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    model = DemandModel(
        DemandParams(), mean_m3h=args.mean, epoch=datetime.fromisoformat(args.epoch), seed=args.seed
    )
    hours = round(args.weeks * 168)
    write_recording(args.out, model, hours)
    print(f"wrote {args.out}: {hours} h of Station.OutletFlow and Station.AmbientTemp, one row a minute")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
