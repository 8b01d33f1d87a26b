"""Installing into the model store: every bad bundle refused with a clear reason while the old
version stays current; rollback, removal, pruning, a `current` turned by hand, a crashing
onnxruntime, images for another box (--target), the incoming/ drop folder."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ModelError
from agent.modelstore.configcheck import binding_checker
from agent.modelstore.selftest import CRASH_HOOK_ENV
from agent.modelstore.signing import generate_key_pair, sign_bundle
from agent.modelstore.store import Store
from agent.ops.audit import AuditLog
from tests.store.kit import DEV_PUB, edge_agent, make_archive, make_bundle, write_config

pytestmark = pytest.mark.timeout(120)


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def __call__(self, action: str, model: str, message: str, detail: object) -> None:
        self.rows.append((action, model, message))

    def actions(self) -> list[str]:
        return [a for a, _, _ in self.rows]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, Rows, Path]:
    rows = Rows()
    store = Store(tmp_path / "store", keep=3, audit=rows)
    cfg = write_config(tmp_path)
    v1 = make_bundle(tmp_path / "v1", "1")
    install(store, cfg, v1)
    return store, rows, cfg


def install(store: Store, cfg: Path, src: Path, **kw: object) -> object:
    config = load_config(cfg)
    return store.install(src, trusted_keys=[DEV_PUB], check=binding_checker(config, str(cfg)), **kw)  # type: ignore[arg-type]


def refused(store: Store, cfg: Path, src: Path, *words: str) -> str:
    with pytest.raises(ModelError) as err:
        install(store, cfg, src)
    text = str(err.value)
    for w in words:
        assert w in text, text
    assert store.current("tiny") == "1" and store.check() == []
    assert store.load("tiny").manifest.version == "1"  # the old version still serves
    assert not (store.root / "tiny" / "2").exists()
    return text


def test_good_install_switches_and_records_the_self_test(
    setup: tuple[Store, Rows, Path], tmp_path: Path
) -> None:
    store, rows, cfg = setup
    res = install(store, cfg, make_bundle(tmp_path / "v2", "2", int8=True))
    assert store.current("tiny") == "2" and store.check() == []
    rec = store.state("tiny").versions["2"]
    assert rec.state == "verified" and rec.variant in ("model.onnx", "model-int8.onnx")
    assert set(rec.latencies_us) == {"model.onnx", "model-int8.onnx"} and rec.cpu_flags
    bundle = store.load("tiny")
    assert bundle.fingerprint == rec.fingerprint and bundle.variant.file == rec.variant
    assert res.previous == "1"
    assert rows.actions() == ["model_install", "model_install"]


def test_an_int8_variant_that_disagrees_with_fp32_on_this_cpu_is_not_chosen(
    setup: tuple[Store, Rows, Path], tmp_path: Path
) -> None:
    store, _, cfg = setup
    install(store, cfg, make_bundle(tmp_path / "v2", "2", int8=True, int8_skew=True, checks=None))
    rec = store.state("tiny").versions["2"]
    assert store.current("tiny") == "2" and rec.variant == "model.onnx"
    assert "disagrees with model.onnx on this CPU" in rec.failed_variants["model-int8.onnx"]
    assert store.load("tiny").variant.file == "model.onnx"


def test_flipped_byte_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, rows, cfg = setup
    b = make_bundle(tmp_path / "v2", "2")
    data = bytearray((b / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model.onnx").write_bytes(bytes(data))
    refused(store, cfg, b, "model.onnx", "modified or corrupted", "sha256")
    assert rows.actions()[-1] == "model_refused"


def test_wrong_key_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, _, cfg = setup
    generate_key_pair(tmp_path / "k.pem", tmp_path / "k.pub")
    b = make_bundle(tmp_path / "v2", "2", key=tmp_path / "k.pem")
    refused(store, cfg, b, "not trusted")


def test_missing_signature_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, _, cfg = setup
    refused(store, cfg, make_bundle(tmp_path / "v2", "2", key=None), "unsigned")


def test_manifest_changed_after_signing_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, _, cfg = setup
    b = make_bundle(tmp_path / "v2", "2")
    m = json.loads((b / "manifest.json").read_text())
    m["outputs"][0]["thresholds"]["alarm"] = 1e9
    (b / "manifest.json").write_text(json.dumps(m))
    refused(store, cfg, b, "tampered")


def test_traversal_archive_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, _, cfg = setup
    archive = make_archive(make_bundle(tmp_path / "v2", "2"), tmp_path / "v2.tar.gz")
    with tarfile.open(archive, "a:gz") if False else tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as tf:
        with tarfile.open(archive, "r:gz") as src:
            for m in src:
                tf.addfile(m, src.extractfile(m))
        evil = tarfile.TarInfo("v2/../../../../tmp/evil-cron")
        evil.size = 4
        tf.addfile(evil, BytesIO(b"boom"))
    refused(store, cfg, tmp_path / "evil.tar.gz", "path traversal")
    assert not Path("/tmp/evil-cron").exists()


def test_symlink_out_of_the_bundle_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, _, cfg = setup
    b = make_bundle(tmp_path / "v2", "2")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(b / "model.onnx", outside)
    os.symlink(outside, b / "model.onnx")
    refused(store, cfg, b, "model.onnx", "link")


def test_shapes_that_do_not_match_the_onnx_file_refused(
    setup: tuple[Store, Rows, Path], tmp_path: Path
) -> None:
    store, _, cfg = setup
    b = make_bundle(tmp_path / "v2", "2", n_in=3, checks=None)  # the ONNX file takes [batch, 3]
    refused(store, cfg, b, "shape", "[batch, 2]")


def test_variant_whose_outputs_do_not_match_its_checks_refused(
    setup: tuple[Store, Rows, Path], tmp_path: Path
) -> None:
    store, _, cfg = setup
    text = refused(
        store, cfg, make_bundle(tmp_path / "v2", "2", checks="bad"), "no variant passed", "check 0"
    )
    assert "expected" in text and f"tiny v2 ({tmp_path / 'v2'})" in text


def test_binding_mismatch_refused(setup: tuple[Store, Rows, Path], tmp_path: Path) -> None:
    store, _, cfg = setup
    b = make_bundle(tmp_path / "v2", "2")
    m = json.loads((b / "manifest.json").read_text())
    m["inputs"][0]["unit"] = "psi"
    m["inputs"][1]["range"] = [-100.0, -50.0]  # tag B is a uint16: it cannot hold any of it
    m["window"]["sample_period_s"] = 0.05  # faster than the tags are polled (every 100 ms)
    (b / "manifest.json").write_text(json.dumps(m))
    sign_bundle(b, Path(__file__).resolve().parents[2] / "export" / "keys" / "dev-ed25519.pem")
    text = refused(store, cfg, b, "expects unit psi", "tag B of asset p1", "can only hold [0, 65535]")
    assert "expects a sample every 0.05 s" in text


def test_onnxruntime_crash_is_a_refusal(
    setup: tuple[Store, Rows, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _, cfg = setup
    monkeypatch.setenv(CRASH_HOOK_ENV, "SIGILL")
    refused(store, cfg, make_bundle(tmp_path / "v2", "2"), "crashed with SIGILL", "cannot run this model")


def test_rollback_remove_prune_and_a_current_turned_by_hand(
    setup: tuple[Store, Rows, Path], tmp_path: Path
) -> None:
    store, rows, cfg = setup
    for v in ("2", "3", "4"):
        install(store, cfg, make_bundle(tmp_path / f"v{v}", v))
    st = store.state("tiny")
    assert sorted(st.versions) == ["2", "3", "4"] and not (store.root / "tiny" / "1").exists()  # keep 3
    assert store.rollback("tiny") == "3" and store.current("tiny") == "3"
    assert store.rollback("tiny", "2") == "2"
    with pytest.raises(ModelError, match="is current"):
        store.remove("tiny", "2")
    store.remove("tiny", "4")
    assert sorted(store.state("tiny").versions) == ["2", "3"]
    with pytest.raises(ModelError, match="not a verified version"):
        store.rollback("tiny", "1")
    # someone points current at a copied-in directory by hand: refused, not run
    shutil.copytree(tmp_path / "v4", store.root / "tiny" / "9")
    os.remove(store.root / "tiny" / "current")
    os.symlink("9", store.root / "tiny" / "current")
    with pytest.raises(ModelError, match="did not verify"):
        store.load("tiny")
    assert store.check() != []
    # or changes a file of a verified version in place: refused on load
    os.remove(store.root / "tiny" / "current")
    os.symlink("3", store.root / "tiny" / "current")
    man = store.root / "tiny" / "3" / "manifest.json"
    os.chmod(man, 0o644)
    man.write_text(man.read_text().replace('"alarm": 5.0', '"alarm": 50.0'))
    with pytest.raises(ModelError):
        store.load("tiny")
    assert {"model_rollback", "model_remove"} <= set(rows.actions())


def test_target_image_install_stays_pending_until_its_first_start(tmp_path: Path) -> None:
    target = tmp_path / "image" / "var" / "lib" / "edge-agent" / "models"
    b = make_bundle(tmp_path / "v1", "1")
    out = edge_agent("flash", b, "--target", target, "--trusted-key", DEV_PUB)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "installed" in out.stdout and "pending its self-test at first start" in out.stdout
    store = Store(target)
    assert store.current("tiny") is None and store.state("tiny").versions["1"].state == "pending"
    assert store.check() == []
    # the box's first start: the self-test runs here, then the version is current
    bundle = store.load("tiny", trusted_keys=[DEV_PUB])
    assert bundle.manifest.version == "1" and store.current("tiny") == "1"
    assert store.state("tiny").versions["1"].state == "verified"
    bad = edge_agent(
        "flash", make_bundle(tmp_path / "v2", "2", key=None), "--target", target, "--trusted-key", DEV_PUB
    )
    assert bad.returncode == 1 and "refused" in bad.stdout and "unsigned" in bad.stdout


def test_cli_install_list_show_rollback_verify_remove_audited(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    archive = make_archive(make_bundle(tmp_path / "v1", "1"), tmp_path / "tiny-1.tar.gz")
    out = edge_agent("models", "-c", cfg, "install", archive)
    assert out.returncode == 0 and "installed tiny v1, variant model.onnx: current" in out.stdout, out.stderr
    out = edge_agent("models", "-c", cfg, "install", make_bundle(tmp_path / "v2", "2"), "--json")
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["version"] == "2" and doc["state"] == "current" and doc["previous"] == "1"
    bad = make_bundle(tmp_path / "v3", "3", checks="bad")
    out = edge_agent("models", "-c", cfg, "verify", bad)
    assert out.returncode == 1 and "no variant passed" in out.stderr and "Traceback" not in out.stderr
    out = edge_agent("models", "-c", cfg, "install", bad, "--json")
    assert out.returncode == 1 and not json.loads(out.stdout)["ok"]
    out = edge_agent("models", "-c", cfg, "list")
    assert "tiny" in out.stdout and "2*" in out.stdout
    out = edge_agent("models", "-c", cfg, "rollback", "tiny")
    assert out.returncode == 0 and "v1 is current" in out.stdout
    out = edge_agent("models", "-c", cfg, "remove", "tiny", "1")
    assert out.returncode == 1 and "is current" in out.stderr
    out = edge_agent("models", "-c", cfg, "remove", "tiny", "2")
    assert out.returncode == 0
    assert json.loads(edge_agent("models", "-c", cfg, "show", "tiny").stdout)["current"] == "1"
    cfgd = load_config(cfg)
    with AuditLog(cfgd.audit_config()) as audit:
        rows = [r for r in audit.query(kinds=["event"]) if r.model == "tiny"]
    assert [r.action for r in rows] == [
        "model_install", "model_install", "model_refused", "model_rollback", "model_remove",
    ]  # fmt: skip
    assert all(r.user for r in rows)


def test_incoming_drop_by_a_group_member_is_installed_by_the_service(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    (store.root / "incoming").mkdir(parents=True)
    queued = store.drop(make_bundle(tmp_path / "v1", "1"))
    assert store.incoming() == [queued]
    cfg = write_config(tmp_path)
    res = install(store, cfg, queued)
    assert res.state == "current" and store.current("tiny") == "1"


def test_archive_members_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.modelstore import archive as arc

    def build(name: str, *members: tarfile.TarInfo) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tf:
            for m in members:
                tf.addfile(m, BytesIO(b"x" * m.size) if m.isreg() else None)
        return path

    def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = "") -> tarfile.TarInfo:
        t = tarfile.TarInfo(name)
        t.type, t.size, t.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
        return t

    cases = {
        "absolute path refused": info("/etc/passwd"),
        "path traversal": info("b/../x"),
        "links are refused": info("b/model.onnx", tarfile.SYMTYPE, link="/etc/shadow"),
        "links are refused (link to 'b/a')": info("b/h", tarfile.LNKTYPE, link="b/a"),
        "device refused": info("b/dev", tarfile.CHRTYPE),
        "FIFO refused": info("b/fifo", tarfile.FIFOTYPE),
        "nested directories": info("b/c/d"),
    }
    for i, (why, member) in enumerate(cases.items()):
        with pytest.raises(ModelError, match=why.replace("(", r"\(").replace(")", r"\)")):
            arc.unpack_bundle(build(f"a{i}.tar.gz", member), tmp_path / f"out{i}")
    monkeypatch.setattr(arc, "MAX_MEMBERS", 3)
    many = build("many.tar.gz", *(info(f"b/f{i}") for i in range(4)))
    with pytest.raises(ModelError, match="more than 3 members"):
        arc.unpack_bundle(many, tmp_path / "outm")
    monkeypatch.setattr(arc, "MAX_MODEL_BYTES", 10)
    with pytest.raises(ModelError, match="more than the limit"):
        arc.unpack_bundle(build("big.tar.gz", info("b/big", size=11)), tmp_path / "outb")
