"""`edge-agent service install|uninstall` into a temporary root, checked file by file.

The install runs through systemd/install.sh (the wrapper a gateway runs) with ``--root``: users
go into the root's etc/passwd and etc/group, nothing calls useradd or systemctl. Owners are
real (the install runs as root, as on a gateway and in CI) and compared with the numbers of the
fake passwd.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLANT = ROOT / "configs" / "plant-example.yaml"  # no secrets
OPCUA = ROOT / "configs" / "opcua-example.yaml"  # password: {credential: opcua-password}
UNIT_TEXT = (ROOT / "systemd" / "edge-agent.service").read_text()


@pytest.fixture(autouse=True)
def _as_root() -> None:
    assert os.geteuid() == 0, "the install sets owners: run this test as root (CI does)"


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / "systemd" / "install.sh"), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _fake_etc(root: Path) -> None:
    """A target whose system ids 999 (a user) and 20 (dialout) are taken."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nsshd:x:999:65534::/run/sshd:/usr/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(etc / "shadow", 0o640)


def _ids(root: Path) -> tuple[int, int]:
    user = [ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("edge-agent:")]
    group = [ln.split(":") for ln in (root / "etc/group").read_text().splitlines() if ln.startswith("edge-agent:")]
    assert len(user) == 1 and len(group) == 1
    return int(user[0][2]), int(group[0][2])


def _check(path: Path, mode: int, uid: int, gid: int) -> None:
    st = path.lstat()
    assert stat.S_IMODE(st.st_mode) == mode, f"{path}: mode {stat.S_IMODE(st.st_mode):o}, want {mode:o}"
    assert (st.st_uid, st.st_gid) == (uid, gid), f"{path}: owner {st.st_uid}:{st.st_gid}, want {uid}:{gid}"


def test_install_into_a_root_without_credentials(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _fake_etc(root)
    proc = _install(root, "--config", str(PLANT))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # The account: a system user and group of its own, at the top free id of the system range.
    passwd = (root / "etc/passwd").read_text().splitlines()
    assert passwd[:2] == ["root:x:0:0:root:/root:/bin/bash", "sshd:x:999:65534::/run/sshd:/usr/sbin/nologin"]
    assert passwd[2:] == ["edge-agent:x:998:998:edge inference agent:/var/lib/edge-agent:/usr/sbin/nologin"]
    assert (root / "etc/group").read_text().splitlines() == ["root:x:0:", "dialout:x:20:", "edge-agent:x:998:"]
    assert (root / "etc/shadow").read_text().splitlines()[1].startswith("edge-agent:!:")
    _check(root / "etc/shadow", 0o640, 0, 0)  # kept as it was
    uid, gid = _ids(root)
    assert (uid, gid) == (998, 998)

    expected = {
        "opt/edge-agent": (0o755, 0, 0),
        "opt/edge-agent/README.md": (0o644, 0, 0),
        "etc/edge-agent": (0o750, 0, gid),
        "etc/edge-agent/agent.yaml": (0o640, 0, gid),
        "etc/edge-agent/credentials": (0o700, 0, 0),
        "etc/edge-agent/pki": (0o750, 0, gid),
        "etc/edge-agent/pki/own": (0o750, 0, gid),
        "etc/edge-agent/pki/trusted": (0o750, 0, gid),
        "var/lib/edge-agent": (0o750, uid, gid),
        "var/lib/edge-agent/pki": (0o750, uid, gid),
        "var/lib/edge-agent/pki/rejected": (0o750, uid, gid),
        "var/lib/edge-agent/models": (0o750, uid, gid),
        "opt/edge-agent/models": (0o755, 0, 0),
        "etc/systemd/system/edge-agent.service": (0o644, 0, 0),
        "etc/systemd/system/edge-agent.service.d": (0o755, 0, 0),
        "etc/systemd/system/edge-agent.service.d/credentials.conf": (0o644, 0, 0),
    }
    for rel, (mode, u, g) in expected.items():
        _check(root / rel, mode, u, g)
    assert not (root / "opt/edge-agent/.venv").exists()  # --root builds no venv
    assert "is not built" in proc.stdout

    # The shipped bundles: root's and read-only (the software); the model store starts empty.
    shipped = sorted(p.parent.name for p in (ROOT / "models").glob("*/manifest.json"))
    installed = root / "opt/edge-agent/models"
    assert sorted(p.name for p in installed.iterdir()) == shipped
    assert not any((root / "var/lib/edge-agent/models").iterdir())
    for name in shipped:
        _check(installed / name, 0o755, 0, 0)
        _check(installed / name / "manifest.json", 0o644, 0, 0)
        assert (installed / name / "model.onnx").read_bytes() == (ROOT / "models" / name / "model.onnx").read_bytes()

    assert (root / "etc/edge-agent/agent.yaml").read_bytes() == PLANT.read_bytes()
    assert (root / "etc/systemd/system/edge-agent.service").read_text() == UNIT_TEXT
    dropin = (root / "etc/systemd/system/edge-agent.service.d/credentials.conf").read_text()
    lines = [ln for ln in dropin.splitlines() if ln and not ln.startswith("#")]
    assert lines == ["[Service]"]
    assert "no credentials" in proc.stdout


def test_install_writes_the_credentials_the_config_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = _install(root, "--config", str(PLANT))
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/group").read_text().splitlines() == ["dialout:x:999:", "edge-agent:x:998:"]
    uid, gid = _ids(root)
    assert (uid, gid) == (998, 998)
    # The model store holds a version installed since: a second install must not touch it,
    # and a shipped bundle changed by hand is put back as shipped.
    stored = root / "var/lib/edge-agent/models/pca-pump/2/manifest.json"
    stored.parent.mkdir(parents=True)
    stored.write_text("{}")
    shipped = root / "opt/edge-agent/models/pca-pump/manifest.json"
    shipped.write_text("{}")

    proc = _install(root, "--config", str(OPCUA))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stored.read_text() == "{}"
    assert shipped.read_bytes() == (ROOT / "models/pca-pump/manifest.json").read_bytes()
    assert _ids(root) == (uid, gid)  # the account is reused, not added twice
    assert [ln.split(":")[0] for ln in (root / "etc/passwd").read_text().splitlines()] == ["edge-agent"]
    conf = root / "etc/edge-agent"
    assert (conf / "agent.yaml").read_bytes() == OPCUA.read_bytes()
    assert (conf / "agent.yaml.bak").read_bytes() == PLANT.read_bytes()
    _check(conf / "agent.yaml.bak", 0o640, 0, gid)

    dropin = (root / "etc/systemd/system/edge-agent.service.d/credentials.conf").read_text()
    lines = [ln for ln in dropin.splitlines() if ln and not ln.startswith("#")]
    assert lines == [
        "[Service]",
        "SetCredential=opcua-password:\\n",
        "LoadCredential=opcua-password:/etc/edge-agent/credentials/opcua-password",
    ]
    # The operator is told where the missing secret goes; nothing creates an empty one.
    assert "/etc/edge-agent/credentials/opcua-password" in proc.stdout
    assert not (conf / "credentials" / "opcua-password").exists()

    # systemd accepts the unit with this drop-in (it refuses an empty SetCredential= value).
    tool = shutil.which("systemd-analyze")
    assert tool
    check = tmp_path / "verify"
    (check / "edge-agent.service.d").mkdir(parents=True)
    exe = str(Path(sys.executable).parent / "edge-agent")
    (check / "edge-agent.service").write_text(UNIT_TEXT.replace("/opt/edge-agent/.venv/bin/edge-agent", exe))
    (check / "edge-agent.service.d" / "credentials.conf").write_text(dropin)
    out = subprocess.run(
        [tool, "verify", str(check / "edge-agent.service")], capture_output=True, text=True, cwd=check, check=False
    )
    assert out.returncode == 0 and "edge-agent" not in out.stderr, out.stderr

    # Back to a config without secrets: the credential goes away with it.
    assert _install(root, "--config", str(PLANT)).returncode == 0
    dropin = (root / "etc/systemd/system/edge-agent.service.d/credentials.conf").read_text()
    assert "Credential" not in "".join(ln for ln in dropin.splitlines() if not ln.startswith("#"))


def test_a_bad_config_is_refused_before_anything_changes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bad = ROOT / "tests" / "golden" / "configs" / "bad_word_order.yaml"
    proc = _install(root, "--config", str(bad))
    assert proc.returncode == 1
    assert f"{bad}:22 devices[1].tags[3].word_order" in proc.stderr
    assert not root.exists()


def test_a_credential_name_systemd_cannot_take_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(OPCUA.read_text().replace("{credential: opcua-password}", "{credential: 'opcua:password'}"))
    root = tmp_path / "root"
    proc = _install(root, "--config", str(cfg))
    assert proc.returncode == 1
    assert "'opcua:password' cannot be a systemd credential" in proc.stderr
    assert not (root / "etc/systemd/system/edge-agent.service.d/credentials.conf").exists()


def test_uninstall_keeps_config_state_and_user(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _install(root, "--config", str(PLANT)).returncode == 0
    (root / "opt/edge-agent/.venv/bin").mkdir(parents=True)  # as a real install leaves it
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "systemd" / "uninstall.sh"), "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "etc/systemd/system/edge-agent.service.d").exists()
    assert not (root / "opt/edge-agent").exists()
    assert (root / "etc/edge-agent/agent.yaml").read_bytes() == PLANT.read_bytes()
    assert (root / "var/lib/edge-agent/models").is_dir()  # the model store is state: kept
    assert "edge-agent:" in (root / "etc/passwd").read_text()


def test_certs_create_for_the_service_user(tmp_path: Path) -> None:
    # `sudo edge-agent certs create --owner edge-agent`: a key the service user can read.
    cert, key = tmp_path / "own" / "cert.der", tmp_path / "own" / "key.pem"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "certs", "create", "--owner", "nobody", "--uri", "urn:gw:edge-agent",
         "--cert", str(cert), "--key", str(key)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pw = pwd.getpwnam("nobody")
    _check(key, 0o600, pw.pw_uid, pw.pw_gid)
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert cert.stat().st_uid == pw.pw_uid
    assert "owner nobody" in proc.stdout
