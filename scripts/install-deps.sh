#!/usr/bin/env bash
# Install the system dependencies the libcluster test suite needs on Debian
# bookworm: cmake (+ ninja), Julia 1.5.3 from bullseye together with the
# libunwind it was built against (used via scripts/julia), Redis and OpenMPI
# (benchmark baselines), openssh-server (for scripts/test-hosts.sh) and a
# one-node Slurm with munge (for scripts/test-slurm.sh).
# Idempotent; run as root.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

BULLSEYE_LIST=/etc/apt/sources.list.d/libcluster-bullseye.list
BULLSEYE_PREF=/etc/apt/preferences.d/libcluster-bullseye
LIBUNWIND_VERSION=1.3.2-2
LIBUNWIND_DIR=/opt/libcluster-julia-libunwind

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps.sh: must run as root" >&2
    exit 1
fi

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -q
        apt_updated=1
    fi
}

# Reuse whichever Debian mirror this machine is already configured with.
debian_mirror() {
    local m
    m=$( { grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources \
             | awk '{print $2}';
           grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
             | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } \
         | grep -E '/debian/?$' | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

# 1. Build tools.
pkgs=()
command -v cmake      >/dev/null 2>&1 || pkgs+=(cmake)
command -v ninja      >/dev/null 2>&1 || pkgs+=(ninja-build)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
command -v g++        >/dev/null 2>&1 || pkgs+=(g++)
if [ "${#pkgs[@]}" -gt 0 ]; then
    apt_update_once
    apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi

# 2. Julia 1.5.3 from bullseye, pinned low so nothing else is pulled from it.
if [ ! -f "$BULLSEYE_LIST" ]; then
    mirror=$(debian_mirror)
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} bullseye main" > "$BULLSEYE_LIST"
    apt_updated=0
fi
if [ ! -f "$BULLSEYE_PREF" ]; then
    cat > "$BULLSEYE_PREF" <<'PREF'
# Only use bullseye for packages explicitly requested (julia and its deps).
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PREF
fi

if ! dpkg-query -W -f='${Status}' julia 2>/dev/null | grep -q 'install ok installed'; then
    apt_update_once
    apt-get install -y -q --no-install-recommends julia
fi

# Julia 1.5's exception handling crashes with bookworm's libunwind 1.6;
# unpack bullseye's libunwind8 privately (scripts/julia puts it on LD_LIBRARY_PATH).
if [ ! -e "$LIBUNWIND_DIR/usr/lib/x86_64-linux-gnu/libunwind.so.8" ]; then
    apt_update_once
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "libunwind8=$LIBUNWIND_VERSION")
    rm -rf "$LIBUNWIND_DIR"
    mkdir -p "$LIBUNWIND_DIR"
    dpkg -x "$tmp"/libunwind8_*.deb "$LIBUNWIND_DIR"
fi

# 3. Redis (the dictionaries' benchmark baseline: redis-server and
# redis-benchmark), kept from running as a service.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
    apt_update_once
    apt-get install -y -q --no-install-recommends redis-server redis-tools
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
fi

# 4. OpenMPI (the all-gather's benchmark baseline: mpicc, mpirun).
if ! command -v mpicc >/dev/null 2>&1 || ! command -v mpirun >/dev/null 2>&1; then
    apt_update_once
    apt-get install -y -q --no-install-recommends openmpi-bin libopenmpi-dev
fi

# 5. OpenSSH server (scripts/test-hosts.sh runs its own sshd, /usr/sbin/sshd,
# inside network namespaces), kept from running as a system service: a
# policy-rc.d forbids starting it during the install, the units are disabled
# afterwards, and an sshd the package started anyway is stopped.
if [ ! -x /usr/sbin/sshd ]; then
    apt_update_once
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# libcluster install-deps.sh: no service starts while installing\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    status=0
    apt-get install -y -q --no-install-recommends openssh-server || status=$?
    if [ "$own_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
    [ "$status" -eq 0 ] || exit "$status"
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now ssh ssh.socket >/dev/null 2>&1 || true
    fi
    if [ -s /run/sshd.pid ]; then
        pid=$(cat /run/sshd.pid)
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/sshd ]; then
            kill "$pid" 2>/dev/null || true
        fi
        rm -f /run/sshd.pid
    fi
fi

# 6. Slurm and munge (scripts/test-slurm.sh runs its own munged, slurmctld
# and slurmd with a configuration and key of its own): the smallest set for a
# one-node cluster, kept from running as system services like sshd above.
if ! command -v munged >/dev/null 2>&1 || ! command -v slurmctld >/dev/null 2>&1 ||
   ! command -v slurmd >/dev/null 2>&1 || ! command -v srun >/dev/null 2>&1; then
    apt_update_once
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# libcluster install-deps.sh: no service starts while installing\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        own_policy=1
    fi
    status=0
    apt-get install -y -q --no-install-recommends munge slurmctld slurmd slurm-client || status=$?
    if [ "$own_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
    [ "$status" -eq 0 ] || exit "$status"
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now munge slurmctld slurmd >/dev/null 2>&1 || true
    fi
    # Daemons the packages started anyway (their default pid files).
    for pf in /run/munge/munged.pid:/usr/sbin/munged /run/slurmctld.pid:/usr/sbin/slurmctld \
              /run/slurmd.pid:/usr/sbin/slurmd; do
        f=${pf%%:*}; exe=${pf#*:}
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$exe")" ]; then
            kill "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
fi

echo "install-deps.sh: done"
