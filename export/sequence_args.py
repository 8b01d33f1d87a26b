"""The ``edge-export sequence`` options and the sequence model's size (no torch: the CLI's
parser is built without importing it; export/sequence.py trains and exports)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VOTES", "SequenceConfig", "add_arguments"]

VOTES = ("mean", "median", "min")  # how a score ensemble's members combine


@dataclass(frozen=True)
class SequenceConfig:
    """Size and training of the model (defaults: ~7 k parameters, a minute or two on one core)."""

    channels: int = 16
    latent: int = 3
    kernel: int = 5
    epochs: int = 10
    batch: int = 256
    lr: float = 3e-3
    seed: int = 0
    max_windows: int = 30_000  # training windows (evenly thinned beyond): affordable on one core
    threads: int = 1
    # distillation (export/sequence.py ``distil``): off while ``teacher_channels`` is 0
    teacher_channels: int = 0  # the teacher: the same network, this wide, trained longer
    teacher_epochs: int = 30
    teacher_ensemble: int = 1  # teachers trained with different seeds, their targets averaged
    # with a vote the teacher is a score ensemble of ``teacher_ensemble`` members (seeds seed,
    # seed + 10 ...: what ``score_ensemble``/``vote`` train) and each window's targets are the
    # members' combined as the vote combines their scores (min: the lowest-scoring member's)
    teacher_vote: str = ""
    alpha: float = 0.5  # weight of the student's own objective against the teacher's targets
    prune: float = 1.0  # share of every hidden channel group the distilled student keeps
    finetune_epochs: int = 4  # after pruning
    seeds: int = 3  # training seeds per student family (the distillation gate needs >= 3)
    fpr: float = 1e-3  # the gate's metric: fault-window recall at this normal-window exceedance
    # a score ensemble (export/sequence.py ``ScoreVote``): off while 1
    score_ensemble: int = 1  # members trained with different seeds, served as one graph
    vote: str = "mean"  # how their standardised scores combine: mean, median or min


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The ``edge-export sequence`` options (also ``python -m export.sequence``)."""
    ap.add_argument(
        "--csv", action="append", required=True, type=Path, help="normal recording to train on (repeat)"
    )
    ap.add_argument(
        "--calibrate", action="append", required=True, type=Path,
        help="normal recording (never trained on) for the false-alert calibration (repeat)",
    )  # fmt: skip
    ap.add_argument("--asset", action="append", help="asset name for {asset} in columns (repeat)")
    ap.add_argument("--role", action="append", required=True, help="ROLE:UNIT:LOW:HIGH:COLUMN (repeat)")
    ap.add_argument("--operating", action="append", required=True, help="an operating role (repeat)")
    ap.add_argument(
        "--ewma", action="append", default=[], metavar="ROLE=SECONDS",
        help="the role's rows are the exponentially weighted mean of its column with this time constant "
        "(a history longer than the window, e.g. the recent load: bind it to the speed tag and mark it "
        "--operating; the agent computes the same; repeat)",
    )  # fmt: skip
    ap.add_argument("--period", type=float, default=1.0, help="sample period, s")
    ap.add_argument("--window", type=int, default=60, help="window length, samples")
    ap.add_argument("--stride", type=int, default=10, help="frame stride, samples")
    ap.add_argument("--train-stride", type=int, help="stride of the training windows (default --stride)")
    ap.add_argument("--false-alerts-per-day", type=float, default=0.5, help="per asset-day (default 0.5)")
    ap.add_argument(
        "--on-delay", type=float, help="alert on-delay for the calibration, s (default one frame)"
    )
    ap.add_argument("--epochs", type=int, default=SequenceConfig.epochs)
    ap.add_argument("--channels", type=int, default=SequenceConfig.channels)
    ap.add_argument("--latent", type=int, default=SequenceConfig.latent)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--score-ensemble", type=int, default=SequenceConfig.score_ensemble, metavar="N",
        help="N models trained with different seeds (--seed, +10, +20 ...), each one's score divided by "
        "its 99.9th percentile on held-out normal windows, combined by --vote in one graph (default 1)",
    )  # fmt: skip
    ap.add_argument(
        "--vote", choices=VOTES, default=SequenceConfig.vote,
        help="how the --score-ensemble members' scores combine: mean, median, min (all must agree)",
    )  # fmt: skip
    kd = ap.add_argument_group(
        "distillation",
        "a wider teacher, students distilled from it and pruned, gated against same-size students "
        "trained from scratch over --seeds on labelled fault recordings (--validate)",
    )
    kd.add_argument(
        "--teacher-channels", type=int, default=0, help="teacher width (default 0: no teacher, no gate)"
    )
    kd.add_argument("--teacher-epochs", type=int, default=SequenceConfig.teacher_epochs)
    kd.add_argument(
        "--teacher-ensemble", type=int, default=SequenceConfig.teacher_ensemble, metavar="N",
        help="N teachers trained with different seeds; their standardised errors and roughness "
        "residuals, averaged, are the students' targets (default 1)",
    )  # fmt: skip
    kd.add_argument(
        "--teacher-vote", choices=VOTES, default=SequenceConfig.teacher_vote,
        help="the teacher is a score ensemble of --teacher-ensemble members (seeds --seed, +10 ..., "
        "--teacher-channels wide, --teacher-epochs: what --score-ensemble N --vote V trains); on every "
        "transfer window the students' targets are the members' combined as this vote combines their "
        "scores (min: the lowest-scoring member's, mean: averaged)",
    )  # fmt: skip
    kd.add_argument(
        "--prune", type=float, default=SequenceConfig.prune,
        help="share of every hidden channel group the student keeps (default 1: none pruned)",
    )  # fmt: skip
    kd.add_argument("--finetune-epochs", type=int, default=SequenceConfig.finetune_epochs)
    kd.add_argument(
        "--seeds", type=int, default=SequenceConfig.seeds, help="training seeds per student family"
    )
    kd.add_argument(
        "--validate", action="append", default=[], type=Path,
        help="recording with labelled faults (never trained on) for the distillation gate (repeat)",
    )  # fmt: skip
    kd.add_argument(
        "--label", action="append", default=[], metavar="ASSET=COLUMN",
        help="the numeric fault-label column of an asset in --validate (0: normal; repeat)",
    )  # fmt: skip
    kd.add_argument(
        "--every-graph", type=Path, metavar="DIR",
        help="also write every trained graph (teacher, each seed's distilled and scratch student) to "
        "DIR as a bundle calibrated as --out is (DIR/teacher, DIR/distilled-1 ..., DIR/scratch-1 ...): "
        "for judges of other metrics, e.g. bench/seqdistill.py",
    )  # fmt: skip
    kd.add_argument(
        "--distillation", choices=("auto", "required", "distilled"), default="auto",
        help="auto: a distilled student that does not win is replaced by the scratch one; required: "
        "fail then; distilled: it ships all the same (its family won another gate, e.g. bench/seqdistill.py; "
        "this one is still reported)",
    )  # fmt: skip
    ap.add_argument("--max-windows", type=int, default=SequenceConfig.max_windows)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--version", default="1")
    ap.add_argument("--key", type=Path, help="private key (PEM) to sign the bundle")
    ap.add_argument("--provenance", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--log", action="store_true", help="training progress on stderr")
