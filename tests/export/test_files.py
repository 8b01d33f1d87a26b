"""Training from the user's own files: historian exports (wide and long), agent recording
directories, bulk role mapping, inferred ranges, labels from the data, exclusions, splits,
data quality, and the one-line errors (file, row, column; exit 2)."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ConfigError
from agent.modelstore.bundle import load_bundle
from agent.modelstore.manifest import load_manifest
from export.cli import main
from export.data import DataSpec, ReadOptions, Recording, build_dataset, column_quality, resolve_columns
from export.dataconfig import RoleOverride, data_spec, epoch_seconds
from export.pipeline import export_model, load_config, record_all
from export.tables import DataError, TimestampSpec, read_table

from . import plantfiles
from .conftest import DEV_KEY, DEV_PUB, ROOT

EXAMPLE = ROOT / "configs" / "export-example.yaml"
BERLIN_TS = TimestampSpec(column="Time", format="%d/%m/%Y %H:%M:%S", timezone="Europe/Berlin")


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding every file the example config names."""
    root = tmp_path_factory.mktemp("plant")
    plantfiles.write_plant(root)
    return root


def example(plant: Path, tmp_path: Path, extra: str = "", edit: tuple[str, str] | None = None) -> Path:
    """The example config, run from ``plant`` (relative paths), signed with the dev key."""
    text = EXAMPLE.read_text(encoding="utf-8")
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text + f"key: {DEV_KEY}\n" + extra, encoding="utf-8")
    return cfg


# --------------------------------------------------------------------------- reading


def test_the_example_config_loads_and_names_every_part() -> None:
    cfg = load_config(EXAMPLE)
    d = cfg.models[0].data
    assert [s.split for s in cfg.recordings.sets] == ["train", "calibration", "test"]
    assert d.columns == "{asset}.*" and d.timestamp.timezone == "Europe/Berlin" and d.operating == ["FI102"]
    assert d.roles["TI101"].range == (0, 400) and d.events is not None and len(d.exclude) == 1  # type: ignore[index,union-attr]


def test_wide_historian_with_timezone_jitter_gap_duplicates_and_text(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    stamps = plantfiles.write_historian(p, 300, seed=1, gap=(100, 120), duplicates=(10, 11, 50))
    t = read_table(p, BERLIN_TS)
    assert t.duplicates == 3 and t.form == "wide"
    times, _ = t.numeric("R1.TI101")
    # local Berlin time (UTC+1 in March) read as the right instant
    assert times[0] == stamps[0].timestamp() and len(times) == 280
    # a gap of 20 rows: grid samples inside it are NaN, the rest held from the jittered rows
    grid, (g,) = t.grid(["R1.TI101"], plantfiles.PERIOD_S)
    gap = (grid > stamps[99].timestamp() + 2 * plantfiles.PERIOD_S + 45) & (grid < stamps[100].timestamp())
    assert gap.sum() >= 14 and np.isnan(g[gap]).all() and np.isfinite(g[~gap]).mean() > 0.99
    status = t.series["R1.Status"][1]
    assert status.dtype == object and set(status) == {"RUN"}
    with pytest.raises(DataError) as err:
        t.numeric("R1.Status")
    assert str(err.value) == (
        f"{p}:2 column 'R1.Status': 'RUN' is not a number (a column of text cannot be a model input)"
    )


def test_long_file_with_epoch_ms_and_bad_quality(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    plantfiles.write_long(p, 50, seed=3)
    t = read_table(p, TimestampSpec(format="epoch_ms"))
    assert t.form == "long" and len(t.columns) == 12
    times, v = t.numeric("R1.TI101")
    assert times[0] == plantfiles.START.timestamp() and np.isnan(v[5]) and np.isfinite(np.delete(v, 5)).all()
    # auto-detection reads epoch ms too (numbers above 1e11)
    assert read_table(p).numeric("R1.TI101")[0][0] == plantfiles.START.timestamp()


def test_agent_recording_directory(tmp_path: Path) -> None:
    d = tmp_path / "rec"
    plantfiles.write_recording(d, 100, seed=4)
    t = read_table(d, BERLIN_TS)  # a recording's own format (ISO UTC) whatever the data's
    times, level = t.numeric("R2.LI104")
    assert len(times) == 100 and np.isnan(level[97]) and t.units["R1.TI101"] == "degC"
    assert times[0] == plantfiles.START.timestamp()


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("Time,a\n01/03/2025 00:00:00,1\n32/03/2025 00:00:00,2\n", "%d/%m/%Y %H:%M:%S",
         ":3 column 'Time': timestamp '32/03/2025 00:00:00' does not read as %d/%m/%Y %H:%M:%S"),
        ("when,a\n1,2\n", "auto", ":1 column 'Time': no timestamp column"),
        ("Time,a,a\n1,2,3\n", "auto", ":1 column 'a': given twice in the header"),
        ("Time,a\n1,2,3\n", "auto", ":2: 3 cells, the header has 2"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path: Path, text: str, fmt: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_table(p, TimestampSpec(column="Time", format=fmt))
    assert str(err.value).startswith(str(p) + message) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- roles


def test_bulk_mapping_by_glob_regex_and_list() -> None:
    header = ["R1.TI101", "R1.FI102", "R2.TI101", "R2.FI102", "R1.Status", "Ambient"]
    by_glob = resolve_columns(header, ["R1", "R2"], "{asset}.*", exclude=["*.Status"])
    assert by_glob == {"R1": {"TI101": "R1.TI101", "FI102": "R1.FI102"},
                       "R2": {"TI101": "R2.TI101", "FI102": "R2.FI102"}}
    by_re = resolve_columns(header, ["R1", "R2"], r"re:{asset}\.(?P<role>[TF]I\d+)")
    assert by_re == by_glob
    by_list = resolve_columns(header, ["R1"], ["temp={asset}.TI101", "{asset}.FI102", "air=Ambient"])
    assert by_list == {"R1": {"temp": "R1.TI101", "FI102": "R1.FI102", "air": "Ambient"}}
    with pytest.raises(DataError, match=r"assets 'R1' and 'R2' do not have the same roles .*Status"):
        resolve_columns(header, ["R1", "R2"], "{asset}.*")
    with pytest.raises(DataError, match="no column matches"):
        resolve_columns(header, ["R3"], "{asset}.*")
    with pytest.raises(DataError, match=r"only \{asset\} and \{n\} are placeholders"):
        resolve_columns(header, ["R1"], r"re:{asset}\.TI\d{3}")
    assert resolve_columns(header, ["R1"], r"re:{asset}\.TI\d{{3}}") == {"R1": {"R1_TI101": "R1.TI101"}}


def test_inferred_ranges_training_range_and_operating(plant: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plant)
    cfg = load_config(example(plant, tmp_path))
    recs = record_all(cfg.recordings, progress=False)
    d = cfg.models[0].data
    ds = build_dataset(data_spec(d, recs), recs, validation_fraction=d.validation_fraction)
    roles = {r.role: r for r in ds.spec.roles}
    assert list(roles) == ["TI101", "FI102", "PI103", "LI104", "AI105"]
    assert (roles["TI101"].low, roles["TI101"].high, roles["TI101"].unit) == (0, 400, "degC")  # the user's
    tr = dict(zip(roles, ds.training_range, strict=True))
    lo, hi = tr["FI102"]
    span = hi - lo
    m = d.range_margin
    assert m == 3.0  # the example's (and the default) margin: three spans each side
    assert roles["FI102"].low == pytest.approx(lo - m * span) and roles["FI102"].high == pytest.approx(hi + m * span)
    # the fault drives R1's temperature above anything seen in training, inside the sensor range:
    # those windows are kept (an anomaly signal), not dropped as BAD
    te_r1 = ds.test.x[ds.test.asset == 0][:, -1, 0]
    assert te_r1.max() > tr["TI101"][1] + 10
    assert ds.labels == {0: "normal", 1: "fouling"} and (ds.test.label == 1).sum() > 50
    assert ds.spec.operating == ("FI102",)
    mean = d.model_copy(update={"aggregation": "mean", "roles": {"TI101": RoleOverride(aggregation="instant")}})
    agg = data_spec(mean, recs).aggregation
    assert agg["TI101"] == "instant" and agg["FI102"] == "mean"
    assert any("quantised" in q and "AI105" in q for q in ds.quality)
    assert any("3 row(s) repeat an earlier timestamp" in q for q in ds.quality)
    # the calibration run is its own set, never trained on
    assert ds.calibration is not None and len(ds.calibration) > 500
    assert set(np.unique(ds.calibration.rec)) == {i for i, r in enumerate(recs) if r.split == "calibration"}


def test_excluded_ranges_and_time_split_with_gaps(plant: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plant)
    cfg = load_config(example(plant, tmp_path))
    recs = [r for r in record_all(cfg.recordings, progress=False) if r.split == "train"]
    d = cfg.models[0].data
    base = data_spec(d, recs)
    ds = build_dataset(base, recs, validation_fraction=0.2)
    window = d.window
    ex = d.exclude[0]
    start = epoch_seconds(ex.start, d.timestamp, "start")
    t0 = read_table(recs[0].path, BERLIN_TS).span()[0]
    row0 = (start - t0) / window.sample_period_s
    ends = ds.train.end[(ds.train.rec == 0) & (ds.train.asset == 0)]
    # no training window ends inside the excluded three hours (or holds one of its rows)
    assert not ((ends >= row0) & (ends < row0 + 60 + window.length - 1)).any()
    assert ((ends >= row0 - 30) & (ends < row0)).any()
    # a time split with gaps: train | 1 h | validation | 1 h | test
    split = build_dataset(DataSpec(base.roles, base.assets, base.window, mapping=base.mapping,
                                   options=ReadOptions(timestamp=d.timestamp, test_fraction=0.2, gap_s=3600)),
                          recs, validation_fraction=0.2)
    for rec in (0, 1):
        tr = split.train.end[split.train.rec == rec].max()
        va = split.val.end[split.val.rec == rec]
        te = split.test.end[split.test.rec == rec]
        assert va.min() - window.length + 1 - tr >= 20 and te.min() - window.length + 1 - va.max() >= 20


def test_constant_column_refused_or_dropped(plant: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plant)
    refuse = load_config(example(plant, tmp_path, edit=("'*.Status', '*.SP'", "'*.Status'")))
    recs = record_all(refuse.recordings, progress=False)
    d = refuse.models[0].data
    with pytest.raises(DataError) as err:
        build_dataset(data_spec(d, recs), recs)
    msg = str(err.value)
    assert msg.startswith("data/plant/historian-2025-03.csv: column 'R1.SP' (role SP) is constant")
    assert "set data.constant: drop" in msg and "\n" not in msg
    drop = load_config(example(plant, tmp_path, edit=("'*.Status', '*.SP'", "'*.Status'"))).models[0].data
    drop = drop.model_copy(update={"constant": "drop"})
    ds = build_dataset(data_spec(drop, recs), recs)
    assert "SP" not in [r.role for r in ds.spec.roles] and any("'R1.SP'" in q and "dropped" in q for q in ds.quality)


def test_column_quality_rules() -> None:
    rng = np.random.default_rng(0)
    assert column_quality(np.full(100, 7.0))[0] == "constant"
    # float32 round-off over a fieldbus around a constant value is still constant
    assert column_quality(np.float32(101.325) + rng.normal(0, 1e-6, 1000))[0] == "constant"
    assert column_quality(rng.integers(0, 2, 1000).astype(float))[0] == "constant"  # 2 < 3 distinct values
    assert column_quality(rng.integers(0, 2, 1000).astype(float), min_distinct=2)[0] != "constant"
    assert column_quality(300.0 + rng.normal(0, 0.002, 1000))[0] == "ok"  # a tiny but real variation
    assert column_quality(np.round(rng.normal(0, 2, 1000)) * 0.25)[0] == "quantised"
    assert column_quality(rng.normal(0, 1, 1000))[0] == "ok"


# --------------------------------------------------------------------------- the commands


def test_train_from_files_writes_a_bundle_with_both_ranges(plant: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plant)
    cfg = load_config(example(plant, tmp_path))
    m = cfg.models[0].model_copy(update={"out": tmp_path / "reactor-ae"})
    man = export_model(m, record_all(cfg.recordings, progress=False), key=DEV_KEY, progress=False)
    load_bundle(m.out, trusted_keys=[DEV_PUB])
    ti = man.inputs[0]
    assert ti.role == "TI101" and ti.range == (0, 400) and ti.training_range is not None
    assert ti.range[0] < ti.training_range[0] < ti.training_range[1] < ti.range[1]
    assert [r.operating for r in man.inputs] == [False, True, False, False, False]
    assert {r.aggregation for r in man.inputs} == {"instant"}
    # the training normalisation (in the graph since schema 2: export/quantize.py)
    fi = man.input_normalisation.roles[1] if man.input_normalisation else man.inputs[1].normalisation
    assert fi.std is not None and fi.std > 0.5  # never the silent 1e-6 floor
    rep = (m.out / "report.json").read_text()
    assert '"fouling"' in rep and "bearing" not in rep
    # validation holds no labelled episode: the teacher is scored on held-out normal windows
    teacher = next(m for m in json.loads(rep)["models"] if m["role"] == "teacher 1")
    assert 0 < teacher["val"] <= 1 and "NaN" not in rep  # explained variance, never NaN AUC


def test_edge_export_baseline_writes_signed_loadable_bundles(plant: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(plant)
    out = tmp_path / "baselines"
    assert main(["baseline", "--config", str(example(plant, tmp_path)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reactor-ae-pca" in printed and "reactor-ae-dpca" in printed and "signed" in printed
    pca = load_bundle(out / "reactor-ae-pca", trusted_keys=[DEV_PUB])
    dpca = load_bundle(out / "reactor-ae-dpca", trusted_keys=[DEV_PUB])
    assert pca.signature.state == "signed" and dpca.signature.state == "signed"
    assert [o.name for o in dpca.manifest.outputs] == ["t2", "spe"]
    assert dpca.manifest.features.kind == "flatten" and 2 <= dpca.manifest.window.length <= 6
    assert pca.manifest.provenance["thresholds_from"] == "calibration files"
    x = np.random.default_rng(0).normal(size=(2, *dpca.manifest.model_input.shape[1:])).astype(np.float32)
    t2, spe = dpca.run({"x": x})
    assert np.isfinite(t2).all() and np.isfinite(spe).all()
    assert "report.md" in load_manifest(out / "reactor-ae-pca").files
    # again, unsigned: the bundle is replaced whole (no stale signature beside a new manifest)
    assert main(["baseline", "--config", str(example(plant, tmp_path)), "--out", str(out), "--no-sign"]) == 0
    assert not (out / "reactor-ae-pca" / "signature.json").exists()
    assert load_bundle(out / "reactor-ae-pca", allow_unsigned=True).signature.state != "signed"


def test_baseline_refuses_a_bundle_that_misses_its_check(plant: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway's recording is three times noisier than the history (another transmitter):
    the check on it exceeds the thresholds far more often than the target allows; no bundle,
    a report, exit 1."""
    monkeypatch.chdir(plant)
    odd = plant / "data" / "odd"
    odd.mkdir(exist_ok=True)
    plantfiles.write_recording(odd / "noisy", 480, seed=9, start=plantfiles.START + timedelta(days=80), noise=3.0)
    cfg = example(plant, tmp_path, edit=("files: ['data/plant/recording-*']", "files: [data/odd/noisy]"))
    out = tmp_path / "b"
    assert main(["baseline", "--config", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "above the limit" in err and "no bundle written" in err and len(err.strip().splitlines()) == 1
    assert not (out / "reactor-ae-pca" / "manifest.json").exists()
    assert (tmp_path / "b" / "reactor-ae-pca.refused" / "report.md").exists()
    shutil.rmtree(odd)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("columns: '{asset}.*'", "columns: '{asset}.*'\n      colums: 1"), ":@colums:|models[0].data.colums: unknown key"),
        (("constant: refuse", "constant: maybe"), ":@constant: maybe|models[0].data.constant: must be one of refuse, drop"),
        (("columns: '{asset}.*'", "columns: ['{asset}.TI101', '{asset}.FI102', 'state=R1.Status']"),
         "data/plant/historian-2025-03.csv:2 column 'R1.Status': 'RUN' is not a number"),
        (("timezone: Europe/Berlin", "timezone: UTC"), None),
        (("timezone: Europe/Berlin", "timezone: Mars/Olympus"), ":@timezone: Mars|models[0].data.timestamp.timezone: unknown timezone 'Mars/Olympus'"),
        (("events: data/plant/events.csv", "events: data/plant/bad-events.csv"),
         "data/plant/bad-events.csv:2 column 'asset': 'R9' is not one of the assets ['R1', 'R2']"),
        (("'data/plant/historian-2025-*.csv'", "'data/plant/nothing-*.csv'"),
         "data/plant/nothing-*.csv: no file matches this pattern"),
        (("format: '%d/%m/%Y %H:%M:%S'", "format: iso"),
         "data/plant/historian-2025-03.csv:2 column 'Time': timestamp '01/03/2025 00:00:04' does not read as ISO"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(plant: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], edit: tuple[str, str],
                                            message: str | None) -> None:
    monkeypatch.chdir(plant)
    cfg = example(plant, tmp_path, edit=edit)
    code = main(["baseline", "--config", str(cfg), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    if message is None:  # another timezone is valid: the data just shift by an hour
        assert code == 0
        return
    if message.startswith(":@"):  # a config error: at the line the file gives the field
        marker, _, rest = message[2:].partition("|")
        line = next(i for i, t in enumerate(cfg.read_text().splitlines(), 1) if marker in t)
        message = f"error: {cfg}:{line} {rest}"
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_located_config_error_is_a_config_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("recordings:\n  sets: []\nmodels:\n  - name: x\n    task: anomaly\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert f"{p}:4 models[0].out: required field is missing" in err.value.problems


def test_the_demo_config_names_its_classes_in_the_config_not_in_export() -> None:
    """The embedded plant stays one data source: its fault names live in its config."""
    cfg = load_config(ROOT / "configs" / "export-demo.yaml")
    assert cfg.models[0].data.classes[1] == "bearing_wear"
    for f in (ROOT / "export").glob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert "bearing_wear" not in text and "cavitation" not in text, f


def test_agent_long_recording_gz_with_reason_and_epoch_seconds(tmp_path: Path) -> None:
    import gzip

    d = tmp_path / "rec"
    d.mkdir()
    (d / "recording.json").write_text('{"tags": [{"name": "T", "unit": "degC"}], "period_s": 1}')
    rows = ["timestamp,tag,value,quality,reason", "2025-03-01T00:00:00.000Z,T,1.5,GOOD,",
            "2025-03-01T00:00:01.000Z,T,,BAD,timeout", "2025-03-01T00:00:02.000Z,T,2.5,GOOD,"]
    with gzip.open(d / "long-20250301T000000Z.csv.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n".join(rows) + "\n")
    t = read_table(d)
    times, v = t.numeric("T")
    assert t.units == {"T": "degC"} and np.isnan(v[1]) and v[2] == 2.5 and times[1] - times[0] == 1.0
    p = tmp_path / "e.csv"
    p.write_text("ts,T\n1740787200,1\n1740787260,2\n1740787260,3\n", encoding="utf-8")
    t = read_table(p, TimestampSpec(column="ts", format="epoch_s"))
    assert t.numeric("T")[1].tolist() == [1.0, 3.0] and t.duplicates == 1  # the last row kept


def test_rul_target_and_text_labels_from_a_file(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    n = 400
    rng = np.random.default_rng(0)
    lines = ["timestamp,a,b,mode,rul"]
    for i in range(n):
        mode = "normal" if i < 300 else ("leak" if i < 350 else "blocked")
        lines.append(f"{i * 60},{rng.normal():.4f},{rng.normal():.4f},{mode},{max(0, 350 - i)}")
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from export.dataconfig import DataConfig

    d = DataConfig(columns=["a", "b"], label="mode", rul="rul",
                   window={"sample_period_s": 60, "length": 5, "stride": 1})  # type: ignore[arg-type]
    recs = [Recording(p)]
    ds = build_dataset(data_spec(d, recs), recs, validation_fraction=0.25)
    assert ds.labels == {0: "normal", 1: "blocked", 2: "leak"}  # normal first, then by name
    assert set(np.unique(ds.train.label)) == {0} and set(np.unique(ds.val.label)) == {1, 2}
    assert ds.train.rul[0] == 350 - 4 and np.isfinite(ds.val.rul).all()


def test_manifest_keeps_both_ranges_and_old_manifests_load() -> None:
    from agent.modelstore.manifest import InputRole

    role = InputRole(role="t", unit="degC", range=(0, 400), training_range=(140, 160), operating=True)
    again = InputRole.model_validate_json(role.model_dump_json())
    assert again.training_range == (140, 160) and again.operating
    old = InputRole.model_validate({"role": "t", "unit": "degC", "range": [0, 400]})
    assert old.training_range is None and old.operating is False
    with pytest.raises(ValueError, match="training_range must be"):
        InputRole(role="t", unit="", range=(0, 1), training_range=(2, 1))
