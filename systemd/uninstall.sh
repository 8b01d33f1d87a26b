#!/usr/bin/env bash
# Remove the service; keeps /etc/edge-agent and /var/lib/edge-agent (config, audit log).
set -euo pipefail
systemctl disable --now edge-agent 2>/dev/null || true
rm -f /etc/systemd/system/edge-agent.service
systemctl daemon-reload 2>/dev/null || true
rm -rf /opt/edge-agent
echo "removed; /etc/edge-agent and /var/lib/edge-agent kept"
