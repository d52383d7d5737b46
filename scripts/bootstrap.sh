#!/usr/bin/env bash
# Bring this machine up to what the project needs: Debian packages, a virtual
# environment in .venv, the Python packages pinned in pyproject.toml, and the
# native libraries in build/native/ (from native/): the vTPM's fast path and
# tdxsim's L2 exit hook.
# Idempotent: each step checks first and does nothing when it is already done.
# Quiet unless TDP_VERBOSE=1; one progress line per install step; one clear
# line naming the missing piece when something cannot be installed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.tdp-bootstrap-stamp"
# Native libraries, built with Debian's gcc: the vTPM's swtpm-channel fast path
# (vtpm/fastpath.py) and tdxsim's L2 exit hook (tdxsim/l2/exit_hook.py).
NATIVE_DIR="$ROOT/build/native"
LOG="${TMPDIR:-/tmp}/tdp-bootstrap.$(id -u).log"

# Debian packages (shared/reference/tpm-and-tools.md), plus the compiler and
# binutils for l2-firmware, openssl for certificate checks, sshd for remote runs.
APT_PACKAGES=(
    libtpms0 libtpms-dev swtpm swtpm-tools tpm2-tools libtss2-dev
    libtss2-tcti-mssim0 libtss2-tcti-swtpm0 libtss2-tctildr0 pkg-config
    gcc binutils openssl openssh-server iproute2
)

verbose() { [ -n "${TDP_VERBOSE:-}" ]; }
progress() { echo "bootstrap: $*" >&2; }
die() {
    echo "bootstrap: error: $*" >&2
    [ -s "$LOG" ] && { echo "bootstrap: last lines of $LOG:" >&2; tail -n 15 "$LOG" >&2; }
    exit 1
}
run_logged() {
    if verbose; then "$@"; else "$@" >>"$LOG" 2>&1; fi
}

find_python() {
    local candidate
    for candidate in "${TDP_PYTHON:-}" python3.11 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

missing_apt_packages() {
    local pkg status
    for pkg in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [ "${status:0:2}" = "ii" ] || echo "$pkg"
    done
}

install_apt_packages() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "not root and no sudo: cannot install Debian packages: $*"
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install these Debian packages by hand: $*"
    progress "installing Debian packages: $*"
    run_logged "${sudo[@]}" apt-get update -qq || die "apt-get update failed (network or sources.list?)"
    DEBIAN_FRONTEND=noninteractive run_logged "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "$@" || die "apt-get install failed for: $*"
}

main() {
    : >"$LOG"
    command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this bootstrap supports Debian 12 only"

    local wanted=("${APT_PACKAGES[@]}") python
    if ! python=$(find_python); then
        wanted+=(python3 python3-venv python3-dev)
    else
        "$python" -c 'import ensurepip, venv' 2>/dev/null || wanted+=(python3-venv)
        "$python" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
            || wanted+=(python3-dev)
    fi
    mapfile -t missing < <(missing_apt_packages "${wanted[@]}")
    [ ${#missing[@]} -eq 0 ] || install_apt_packages "${missing[@]}"
    python=$(find_python) || die "Python 3.11 or newer not found after installing python3"

    install_python_packages "$python"
    build_native
}

# The pinned Python packages in .venv, unless the stamp says they are there already.
install_python_packages() {
    local python=$1 want_stamp
    want_stamp="$("$python" -c 'import sys; print(sys.version)' | head -n1) $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
        verbose && progress "nothing to install"
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        progress "creating virtual environment in $VENV"
        run_logged "$python" -m venv "$VENV" || die "could not create the virtual environment $VENV"
    fi
    progress "installing pinned Python packages (tpm2-pytss compiles: about a minute the first time)"
    run_logged "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e "$ROOT[dev]" \
        || die "pip install failed; the failing package is named in the log"
    echo "$want_stamp" >"$STAMP"
}

# Each is rebuilt whenever its source is newer than the library; a failed build is an error,
# because a silently missing fast path would only show as a slower vTPM.
build_native() {
    build_library "the vTPM fast path" vtpm_fastpath -ltpms
    build_library "tdxsim's L2 exit hook" tdxsim_exit_hook
}

build_library() {  # what, name, libraries to link
    local what=$1 name=$2
    shift 2
    local src="$ROOT/native/$name.c" lib="$NATIVE_DIR/lib$name.so"
    if [ -f "$lib" ] && [ "$lib" -nt "$src" ]; then
        return 0
    fi
    progress "compiling $what: $lib"
    mkdir -p "$NATIVE_DIR"
    run_logged gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o "$lib.tmp" "$src" "$@" \
        || die "gcc could not build $lib from $src (Debian packages installed?)"
    mv "$lib.tmp" "$lib"
}

main "$@"
