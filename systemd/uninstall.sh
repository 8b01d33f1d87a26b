#!/usr/bin/env bash
# Remove the service and /opt/edge-agent; keeps /etc/edge-agent, /var/lib/edge-agent and the user.
#   sudo systemd/uninstall.sh [--root DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$here" exec "${PYTHON:-python3}" -m agent.ops.service uninstall "$@"
