#!/usr/bin/env bash
# Check certrail's Prometheus configuration with promtool (Debian's prometheus package):
#
#   bash scripts/promtool.sh
#
# 1. promtool check config deploy/prometheus/prometheus.yml (and the rule files it names)
# 2. promtool check rules deploy/prometheus/rules/*.yml
# 3. promtool test rules deploy/prometheus/tests/*.test.yml (the alerts' unit tests)
#
# Idempotent: when promtool is already on the PATH (or in /usr/bin) nothing is installed
# and no root is needed. Otherwise it installs the `prometheus` package (which ships
# promtool) with apt-get. Debian's package starts and enables a prometheus system
# service at install time where an init system runs; a policy-rc.d that refuses is put in
# place for the install, and the service is disabled afterwards, so that nothing is left
# running or enabled (nothing listens on 9090).

set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'promtool.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

find_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
    elif [ -x /usr/bin/promtool ]; then
        echo /usr/bin/promtool
    else
        return 1
    fi
}

# The package enables its service (systemd unit links, SysV rc links) even when policy-rc.d
# refuses to start it: undo both, and stop it where an init system did start it.
disable_service() {
    if command -v systemctl >/dev/null 2>&1; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now prometheus.service >/dev/null 2>&1 || true
        else
            systemctl disable prometheus.service >/dev/null 2>&1 || true
        fi
    fi
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
    fi
    if [ -x /etc/init.d/prometheus ] && command -v update-rc.d >/dev/null 2>&1; then
        if [ ! -d /run/systemd/system ]; then
            /etc/init.d/prometheus stop >/dev/null 2>&1 || true
        fi
        update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
    log "the prometheus system service is disabled (promtool is all certrail needs)"
}

install_promtool() {
    [ "$(id -u)" -eq 0 ] || die "promtool is missing and this is not root: run it with sudo (or install Debian's prometheus package)"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install promtool (Prometheus) by hand"

    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# written by certrail scripts/promtool.sh for the install only\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    # shellcheck disable=SC2064  # expand now: the trap must remove exactly what this run created
    trap "if [ $created_policy -eq 1 ]; then rm -f '$policy'; fi" EXIT

    export DEBIAN_FRONTEND=noninteractive
    log "installing Debian's prometheus package (for promtool)"
    apt-get update -q -o DPkg::Lock::Timeout=600 >&2
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 prometheus >&2

    disable_service
    if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
    trap - EXIT
}

promtool=$(find_promtool) || { install_promtool; promtool=$(find_promtool) || die "promtool is still missing after the install"; }
log "using $promtool ($("$promtool" --version 2>&1 | head -n 1))"

"$promtool" check config deploy/prometheus/prometheus.yml
"$promtool" check config deploy/prometheus/prometheus.local.yml
"$promtool" check rules deploy/prometheus/rules/*.yml
"$promtool" test rules deploy/prometheus/tests/*.test.yml
