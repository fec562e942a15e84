#!/usr/bin/env bash
# Install what the deployer's integration tests start on loopback: nginx and an
# OpenSSH server, from Debian's packages (development and CI).
#
#   sudo bash scripts/deployer_deps.sh
#
# Idempotent: when both binaries are already there it does nothing (and needs
# no root). It never starts, enables or configures a system service: the tests
# start their own nginx and sshd as non-daemon processes on free loopback
# ports, with configs in temporary directories, and stop them.
# Debian's packages start their system services at install time where an init
# system runs; a policy-rc.d that refuses is put in place for the install so
# that nothing listens on ports 80 or 22 afterwards.

set -euo pipefail

log() { printf 'deployer_deps.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
have_sshd() { command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; }

if have_nginx && have_sshd; then
    log "nginx and sshd are installed"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "nginx or sshd is missing and this is not root: run it with sudo"
command -v apt-get >/dev/null 2>&1 || die "no apt-get: install nginx and openssh-server by hand"

packages=()
have_nginx || packages+=(nginx-light)
have_sshd || packages+=(openssh-server)

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by certrail scripts/deployer_deps.sh for the install only\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
log "installing ${packages[*]}"
apt-get update -q >&2
if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >&2; then
    # nginx-light is gone from newer Debian releases; plain nginx is the same server
    if [[ " ${packages[*]} " == *" nginx-light "* ]]; then
        log "nginx-light is not available; installing nginx"
        packages=("${packages[@]/nginx-light/nginx}")
        apt-get install -y -q --no-install-recommends "${packages[@]}" >&2
    else
        die "apt-get install ${packages[*]} failed"
    fi
fi

have_nginx || die "nginx is still missing after the install"
have_sshd || die "sshd is still missing after the install"
log "installed: $(/usr/sbin/nginx -v 2>&1), $(/usr/sbin/sshd -V 2>&1 | head -n 1 || true)"
