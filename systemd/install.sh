#!/usr/bin/env bash
# Install edge-agent as a systemd service from this checkout; needs only python3 (and its venv
# module: Debian's python3-venv). A thin wrapper around `edge-agent service install`:
#   sudo systemd/install.sh [--config FILE] [--wheels DIR] [--root DIR] [--no-venv]
# --wheels DIR installs offline from a folder made by `make wheelhouse`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$here" exec "${PYTHON:-python3}" -m agent.ops.service install --source "$here" "$@"
