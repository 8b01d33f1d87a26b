#!/usr/bin/env bash
# The system packages (Debian names) that the tests and tools need beyond python3. The one list:
# the Makefile (`make deps`, which `make test` runs) and .ci/run both call this script.
#
#   scripts/system-deps.sh [GROUP ...]     groups: venv, test (default, includes venv), gateway
#
# Installs what is missing with apt-get (as root, or through sudo); does nothing when all is
# there; otherwise prints one line naming the packages and exits 1.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(test)

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
want() { local pkg=$1; shift; "$@" >/dev/null 2>&1 || need+=("$pkg"); }

for g in "${groups[@]}"; do
  case "$g" in
    venv)
      # Debian's python3 lacks ensurepip (and so `python3 -m venv`) until python3-venv is in.
      want python3-venv "$PYTHON" -m ensurepip --version ;;
    test)
      want python3-venv "$PYTHON" -m ensurepip --version
      want mbpoll have mbpoll                      # independent Modbus client (codec agreement)
      want socat have socat                        # pseudo-terminal pairs for Modbus RTU tests
      want systemd have systemd-analyze            # verify + security score of the unit
      want openssh-server have sshd                # an SSH server on 127.0.0.1 for flashing tests
      want openssh-client have ssh ;;
    gateway)
      want debootstrap have debootstrap            # a Debian 12 root for make gateway-check
      want systemd-container have systemd-nspawn ;;
    *) echo "system-deps.sh: unknown group '$g' (venv, test, gateway)" >&2; exit 2 ;;
  esac
done

[ ${#need[@]} -gt 0 ] || exit 0
# Unique, in order.
mapfile -t need < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
    sudo=(sudo)
  else
    echo "missing system packages: ${need[*]} (install them as root: apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${need[*]} (Debian names; no apt-get here: install their equivalents)" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
"${sudo[@]}" apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
