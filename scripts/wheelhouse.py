"""Build a wheel folder for an offline install: `make wheelhouse` (python scripts/wheelhouse.py DIR).

For each gateway architecture (x86_64 and aarch64 by default), CPython 3.11 manylinux wheels
of the runtime dependencies in pyproject.toml (binary only: a gateway has no compiler), then
the project's own wheel and the build backend (setuptools, wheel), so that

    systemd/install.sh --wheels DIR      (pip install --no-index --find-links DIR)

installs with the network cut. Needs the package index while it builds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION = "3.11"
# onnxruntime publishes manylinux_2_28 wheels for both, other packages manylinux2014 (= 2_17)
# and some only a 2_27 tag; pip matches them literally, so each is named. Debian 12: glibc 2.36.
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_27", "manylinux_2_28")
PLATFORMS = {arch: [f"{tag}_{arch}" for tag in MANYLINUX] for arch in ("x86_64", "aarch64")}
BUILD = ["setuptools>=77", "wheel"]


def runtime_requirements() -> list[str]:
    """The ``[project] dependencies`` of pyproject.toml."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def build(out: Path, arches: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    for arch in arches:
        print(f"wheelhouse: {arch} (CPython {PYTHON_VERSION}, manylinux up to glibc 2.28)", flush=True)
        platforms = [arg for plat in PLATFORMS[arch] for arg in ("--platform", plat)]
        subprocess.run(
            [*pip, "download", "--quiet", "--only-binary=:all:", *platforms,
             "--python-version", PYTHON_VERSION, "--implementation", "cp", "--dest", str(out),
             *runtime_requirements(), *BUILD],
            check=True,
        )  # fmt: skip
    print("wheelhouse: edge-inference-agent", flush=True)
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(ROOT)], check=True)
    wheels = sorted(p.name for p in out.glob("*.whl"))
    print(f"wheelhouse: {len(wheels)} wheels in {out}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("out", type=Path, nargs="?", default=ROOT / "wheelhouse")
    p.add_argument("--arch", action="append", choices=sorted(PLATFORMS), help="default: all")
    args = p.parse_args()
    build(args.out, args.arch or sorted(PLATFORMS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
