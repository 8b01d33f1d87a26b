"""`edge-agent flash` over real SSH: an sshd on 127.0.0.1 started by the test as the current
user (its own host key, an authorized user key, a known_hosts file written here), two
"gateways" as two store directories behind it, one gateway unreachable; the system's ssh and
scp in BatchMode."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.modelstore.store import Store
from tests.store.kit import DEV_PUB, ROOT, edge_agent, make_archive, make_bundle, write_config

pytestmark = pytest.mark.timeout(120)

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    ssh_config: Path
    user: str


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        os.makedirs("/run/sshd", mode=0o755)  # sshd as root wants its privilege separation directory
    port = free_port()
    (d / "sshd_config").write_text(
        f"""ListenAddress 127.0.0.1
HostKey {d / "host"}
PidFile {d / "sshd.pid"}
AuthorizedKeysFile {d / "authorized_keys"}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AcceptEnv EDGE_AGENT_STORE
Subsystem sftp internal-sftp
"""
    )
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    host_pub = (d / "host.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    closed = free_port()  # nothing listens here: the unreachable gateway
    blocks = []
    for alias, hport, store in (("gw1", port, "gw1"), ("gw2", port, "gw2"), ("gw3", closed, "gw3")):
        blocks.append(
            f"""Host {alias}
  HostName 127.0.0.1
  Port {hport}
  IdentityFile {d / "user"}
  IdentitiesOnly yes
  UserKnownHostsFile {d / "known_hosts"}
  StrictHostKeyChecking yes
  SetEnv EDGE_AGENT_STORE={tmp_path / store}
"""
        )
    (d / "ssh_config").write_text("\n".join(blocks))
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, (d / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
        yield Sshd(port, d / "ssh_config", user)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def remote_cmd(cfg: Path) -> str:
    # What a gateway runs: this checkout's agent, the gateway's store named by its environment.
    return (
        f"OMP_NUM_THREADS=1 PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m agent "
        f'models -c {shlex.quote(str(cfg))} --store "$EDGE_AGENT_STORE" install'
    )


def rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["HOST", "RESULT", "VERSION", "VARIANT"]
    return {ln.split()[0]: ln.split(None, 4) for ln in lines[1:]}


def test_flash_to_two_gateways_one_unreachable(sshd: Sshd, tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    uploads = set(Path("/tmp").glob("edge-bundle-*.tar.gz"))
    bundle = make_bundle(tmp_path / "v1", "1")
    hosts = [f"{sshd.user}@gw1", f"{sshd.user}@gw2", f"{sshd.user}@gw3"]
    args = [
        "flash",
        bundle,
        "--ssh-config",
        sshd.ssh_config,
        "--remote-cmd",
        remote_cmd(cfg),
        "--parallel",
        "2",
    ]
    for h in hosts:
        args += ["--host", h]
    out = edge_agent(*args, timeout=120)
    print(out.stdout)  # the table the README shows
    assert out.returncode == 1, out.stdout + out.stderr  # one host failed
    table = rows(out.stdout)
    assert table[hosts[0]][1:4] == ["installed", "1", "model.onnx"] and "current" in table[hosts[0]][4]
    assert table[hosts[1]][1:4] == ["installed", "1", "model.onnx"]
    assert table[hosts[2]][1] == "unreachable" and "Connection refused" in table[hosts[2]][4]
    for gw in ("gw1", "gw2"):
        store = Store(tmp_path / gw)
        assert store.current("tiny") == "1" and store.check() == []
        assert store.load("tiny", trusted_keys=[DEV_PUB]).manifest.version == "1"
    assert not (tmp_path / "gw3").exists()

    # a bundle the gateways refuse: each says why, the version they run stays
    bad = make_archive(make_bundle(tmp_path / "v2", "2", checks="bad"), tmp_path / "tiny-2.tar.gz")
    args = ["flash", bad, "--ssh-config", sshd.ssh_config, "--remote-cmd", remote_cmd(cfg)]
    out = edge_agent(*args, "--host", hosts[0], "--host", hosts[1], timeout=120)
    assert out.returncode == 1
    table = rows(out.stdout)
    for h in hosts[:2]:
        assert table[h][1] == "refused" and "no variant passed" in table[h][4]
    assert Store(tmp_path / "gw1").current("tiny") == "1"

    # and a good one, with a trial: installed beside the running version
    good = make_bundle(tmp_path / "v3", "3")
    args = ["flash", good, "--ssh-config", sshd.ssh_config, "--remote-cmd", remote_cmd(cfg), "--trial", "5"]
    out = edge_agent(*args, "--host", hosts[0], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert rows(out.stdout)[hosts[0]][1:3] == ["installed", "3"] and "trial (was 1)" in out.stdout
    st = Store(tmp_path / "gw1").state("tiny")
    assert st.trial is not None and st.trial["version"] == "3" and st.trial["periods"] == 5
    # nothing left behind in the gateway's /tmp
    assert set(Path("/tmp").glob("edge-bundle-*.tar.gz")) <= uploads
