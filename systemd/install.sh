#!/usr/bin/env bash
# Install edge-agent as a service from this checkout (offline: pip uses a wheel folder if given).
#   sudo systemd/install.sh [--wheels DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
wheels=""
[ "${1:-}" = "--wheels" ] && wheels="--no-index --find-links ${2:?wheel folder}"
id edge-agent >/dev/null 2>&1 || useradd --system --home /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent
install -d -m 0755 /opt/edge-agent /etc/edge-agent
install -d -m 0700 /etc/edge-agent/credentials
cp -r "$here"/agent "$here"/models "$here"/pyproject.toml "$here"/README.md /opt/edge-agent/
python3 -m venv /opt/edge-agent/.venv
# shellcheck disable=SC2086
/opt/edge-agent/.venv/bin/pip install --quiet $wheels /opt/edge-agent
[ -f /etc/edge-agent/agent.yaml ] || install -m 0640 -g edge-agent "$here"/configs/plant-example.yaml /etc/edge-agent/agent.yaml
install -m 0644 "$here"/systemd/edge-agent.service /etc/systemd/system/edge-agent.service
systemctl daemon-reload
echo "edit /etc/edge-agent/agent.yaml, then: systemctl enable --now edge-agent"
