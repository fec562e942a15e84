#!/usr/bin/env bash
# Build lego's ACME client (the Go module github.com/go-acme/lego/v5, pinned) with the machine's Go toolchain into the
# project's cache, for the ACME door's end-to-end test (tests/e2e/test_acme_lego_live.py):
#
#   bash scripts/lego.sh          # prints the binary's path last
#
# What is built is tests/e2e/lego_driver: lego's library, unmodified, behind a small main with the lego CLI's flags
# and its run / renew / revoke actions. The lego CLI itself cannot be built here: lego v5.6.0's CLI package imports
# gitlab.com/greyxor/slogor, which the Go module proxy reachable from this machine refuses
# ("reading https://proxy.golang.org/gitlab.com/greyxor/slogor/@v/v1.7.1.zip: 403 Forbidden ... This module version
# is not available"), and so do 19 DNS-provider modules. The driver's go.mod / go.sum pin lego and what it needs.
#
# GOPATH, GOMODCACHE and GOCACHE live under .cache/go so that nothing lands outside the project. Idempotent: the
# binary is kept under .cache/lego/<lego version>-<hash of the driver's sources>/ and nothing is fetched or built when
# it exists.

set -euo pipefail
cd "$(dirname "$0")/.."

LEGO_VERSION=v5.6.0
driver=tests/e2e/lego_driver

log() { printf 'lego.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

grep -q "github.com/go-acme/lego/v5 $LEGO_VERSION\$" "$driver/go.mod" \
    || die "$driver/go.mod does not pin github.com/go-acme/lego/v5 $LEGO_VERSION"
root=$(pwd)
sources=$(cat "$driver/go.mod" "$driver/go.sum" "$driver/main.go" | sha256sum | cut -c1-12)
bin_dir="$root/.cache/lego/$LEGO_VERSION-$sources"
binary="$bin_dir/lego-driver"

if [ ! -x "$binary" ]; then
    go=$(command -v go || { [ -x /usr/local/go/bin/go ] && echo /usr/local/go/bin/go; }) \
        || die "no Go toolchain (go) on the PATH or in /usr/local/go/bin: install Go to build lego"
    mkdir -p "$bin_dir" "$root/.cache/go/path" "$root/.cache/go/mod" "$root/.cache/go/build"
    log "building lego $LEGO_VERSION ($driver) with $("$go" version)"
    # -modcacherw: the module cache stays deletable with rm -rf .cache; -mod=readonly: go.sum is the pin
    (cd "$driver" && GOPATH="$root/.cache/go/path" GOMODCACHE="$root/.cache/go/mod" GOCACHE="$root/.cache/go/build" \
        GOFLAGS="-modcacherw -buildvcs=false -mod=readonly" CGO_ENABLED=0 \
        "$go" build -trimpath -o "$binary.tmp" .) >&2 || die "building $driver failed"
    mv "$binary.tmp" "$binary"
    # earlier builds of the driver (other sources) are not used again
    for stale in "$root/.cache/lego/$LEGO_VERSION"-*; do
        if [ "$stale" != "$bin_dir" ]; then rm -rf "$stale"; fi
    done
fi
log "using $binary (lego $LEGO_VERSION)"
echo "$binary"
