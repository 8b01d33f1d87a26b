#!/usr/bin/env bash
# make gateway-check: the service as a gateway runs it. Boots a Debian 12 system (debootstrap
# from Debian's packages, started with `systemd-nspawn -b`), installs the agent offline from
# ./wheelhouse with systemd/install.sh (as the README's gateway procedure says), starts the
# unit with the shipped models against the embedded plant, and checks what systemd reports.
#
#   sudo make gateway-check          (GATEWAY_DIR=/var/tmp/edge-agent-gateway by default)
#
# Needs root, the gateway group of scripts/system-deps.sh (debootstrap, systemd-container) and
# a machine that lets systemd-nspawn boot a container; where one of these is missing it says so
# in one line and exits 1.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${GATEWAY_DIR:-/var/tmp/edge-agent-gateway}"
pristine="$work/debian12"
run="$work/run"
fails=0

say() { echo "gateway-check: $*"; }
cannot() { echo "gateway-check: cannot run here: $*" >&2; exit 1; }
check() {  # check NAME COMMAND...: PASS or FAIL, and go on
  if "${@:2}"; then say "PASS $1"; else say "FAIL $1"; fails=$((fails + 1)); fi
}

[ "$(id -u)" -eq 0 ] || cannot "needs root (debootstrap and systemd-nspawn): sudo make gateway-check"
bash "$here/scripts/system-deps.sh" gateway || cannot "debootstrap and systemd-nspawn are not installed"
[ -d "$here/wheelhouse" ] || cannot "no ./wheelhouse: make wheelhouse"

if [ ! -x "$pristine/usr/bin/python3" ]; then
  say "debootstrap Debian 12 (bookworm, minbase + systemd + python3) into $pristine"
  rm -rf "$pristine"
  mkdir -p "$work"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-venv \
    bookworm "$pristine" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || cannot "debootstrap failed (see $work/debootstrap.log)"
fi
rm -rf "$run"
cp -a "$pristine" "$run"

nspawn=(systemd-nspawn --quiet --register=no --keep-unit -D "$run")
if ! probe=$("${nspawn[@]}" --pipe /bin/true 2>&1); then
  cannot "systemd-nspawn refused to start a container: $(echo "$probe" | tail -1)"
fi

# The gateway's config: the demo's (shipped models, embedded plant on 127.0.0.1:5020) with the
# service's paths, JSON logs for the journal.
mkdir -p "$run/root/gateway"
sed -e 's#^  state_dir: .*#  state_dir: /var/lib/edge-agent#' \
    -e 's#^  log_level: warning#  log_level: info\n  log_format: json#' \
    -e 's#\.\./models/#/opt/edge-agent/models/#' \
    -e 's#\.\./export/keys/#/etc/edge-agent/keys/#' \
    "$here/configs/demo.yaml" >"$run/root/gateway/agent.yaml"

say "booting $run (systemd-nspawn -b)"
setsid "${nspawn[@]}" -b --console=passive --bind-ro="$here:/src" >"$work/boot.log" 2>&1 &
npid=$!
stop_container() {
  if kill -0 "$npid" 2>/dev/null; then
    [ -z "${cpid:-}" ] || timeout 20 nsenter -t "$cpid" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 40); do kill -0 "$npid" 2>/dev/null || break; sleep 0.5; done
    kill "$npid" 2>/dev/null || true
  fi
}
trap stop_container EXIT
cpid=""
for _ in $(seq 60); do
  cpid=$(pgrep -P "$npid" -x systemd || true)
  [ -n "$cpid" ] && break
  sleep 0.5
done
[ -n "$cpid" ] || cannot "the container's systemd did not start (see $work/boot.log)"
ct() { timeout 180 nsenter -t "$cpid" -a "$@"; }
state=$(ct systemctl is-system-running --wait || true)
say "container booted: $(ct cat /etc/debian_version | tr -d '\n'), systemd $state"

say "install: bash /src/systemd/install.sh --wheels /src/wheelhouse --config /root/gateway/agent.yaml"
ct bash /src/systemd/install.sh --wheels /src/wheelhouse --config /root/gateway/agent.yaml 2>&1 \
  | grep -v "WARNING: Location" | sed 's/^/    /'
ct install -D -m 0644 /src/export/keys/dev-ed25519.pub /etc/edge-agent/keys/dev-ed25519.pub
ct systemd-run --quiet --unit=plant /opt/edge-agent/.venv/bin/edge-agent simulate --no-opcua \
  --modbus-port 5020 --scenario /src/configs/scenarios/demo.yaml
sleep 2

show() { ct systemctl show edge-agent -p "$1" --value; }
check "systemctl enable --now edge-agent returns (READY=1 within the start timeout)" \
  ct systemctl enable --quiet --now edge-agent
sleep 20
check "active after 20 s, no restart" test "$(show ActiveState):$(show NRestarts)" = "active:0"
say "    STATUS=$(show StatusText)  watchdog=$(show WatchdogUSec)  pid=$(show MainPID)"
ct journalctl -u edge-agent -o cat --no-pager -n 6 | cut -c1-160 | sed 's/^/    /'
check "runs as edge-agent" test "$(ct stat -c %U "/proc/$(show MainPID)")" = edge-agent
check "shipped models loaded" test "$(ct journalctl -u edge-agent -o cat | grep -c '"event": "model loaded"')" -ge 3
check "audit log written in the state dir" ct test -s /var/lib/edge-agent/audit.sqlite-wal -o -s /var/lib/edge-agent/audit.sqlite
check "caches in /var/cache/edge-agent ($(ct ls /var/cache/edge-agent | tr '\n' ' ')), none in the state dir" \
  ct test ! -e /var/lib/edge-agent/.cache
say "    $(ct systemd-analyze security edge-agent --no-pager | tail -1)"
check "systemctl reload (SIGHUP) keeps it running" \
  sh -c "timeout 60 nsenter -t $cpid -a systemctl reload edge-agent && sleep 2 && test \"\$(timeout 20 nsenter -t $cpid -a systemctl show edge-agent -p NRestarts --value)\" = 0"

# A credential named in a config but missing on disk: the drop-in's default, not 243/CREDENTIALS.
ct sh -c 'mkdir -p /etc/systemd/system/credprobe.service.d
  printf "[Service]\nType=oneshot\nUser=edge-agent\nExecStart=/bin/sh -c \"test -e \$\$CREDENTIALS_DIRECTORY/opcua-password\"\n" \
    >/etc/systemd/system/credprobe.service
  /opt/edge-agent/.venv/bin/python -c "from agent.ops.service import credentials_dropin; print(credentials_dropin([\"opcua-password\"]), end=\"\")" \
    >/etc/systemd/system/credprobe.service.d/credentials.conf
  systemctl daemon-reload'
check "a missing credential file does not fail the start" ct systemctl start credprobe

check "systemctl stop: clean shutdown" sh -c \
  "timeout 60 nsenter -t $cpid -a systemctl stop edge-agent && test \"\$(timeout 20 nsenter -t $cpid -a systemctl show edge-agent -p Result --value)\" = success"

# A crash loop (a config error at every start) must end in the start limit, not go on for ever.
ct sh -c 'cp /etc/edge-agent/agent.yaml /root/good.yaml && echo "bogus_key: 1" >>/etc/edge-agent/agent.yaml'
ct systemctl start --no-block edge-agent
for _ in $(seq 60); do [ "$(show ActiveState)" = failed ] && break; sleep 1; done
check "a crash loop stops at the start limit ($(show NRestarts) restarts)" \
  sh -c "timeout 20 nsenter -t $cpid -a journalctl -u edge-agent -o cat | grep -q 'Start request repeated too quickly'"
check "install.sh --no-venv (python3 hands over to the installed agent) restores the config" sh -c \
  "timeout 120 nsenter -t $cpid -a bash /src/systemd/install.sh --no-venv --config /root/good.yaml >/dev/null \
   && timeout 20 nsenter -t $cpid -a cmp -s /root/good.yaml /etc/edge-agent/agent.yaml"

say "journal of the crash loop (last lines):"
ct journalctl -u edge-agent -o cat --no-pager -n 12 | cut -c1-160 | sed 's/^/    /'
if [ "$fails" -eq 0 ]; then say "all checks passed"; else say "$fails check(s) failed"; exit 1; fi
