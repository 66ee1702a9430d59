#!/usr/bin/env bash
# Boot the Sluice kernel in QEMU, or run the QEMU test suite.
#
#   ./qemu-run.sh [OPTIONS] [-- QEMU-ARGS...]   build + boot, serial log on this terminal
#   ./qemu-run.sh test [--qemu PATH] [--also-qemu PATH|none] [--filter SUBSTR] [...]
#                      (runs the scenarios a second time on target/qemu10/qemu-system-x86_64
#                      when scripts/fetch-qemu10.sh has unpacked it)
#   ./qemu-run.sh capture [--qemu PATH] [--check]   regenerate the DMAR/IVRS fixtures
#   ./qemu-run.sh list | --help
#
# This script only makes sure QEMU is installed and then hands over to the Rust
# harness (harness/, `sluice-harness`), which builds the kernel, builds every QEMU
# command line and runs the scenarios. `./qemu-run.sh --help` lists all options.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")"

need_qemu=1
case "${1:-}" in
    help | list) need_qemu=0 ;;
esac
qemu_explicit=""
prev=""
for arg in "$@"; do
    [ "$arg" = "--" ] && break
    [ "$prev" = "--qemu" ] && qemu_explicit="$arg"
    case "$arg" in
        -h | --help) need_qemu=0 ;;
    esac
    prev="$arg"
done
qemu="${qemu_explicit:-${QEMU:-qemu-system-x86_64}}"

install_qemu() {
    local pkg=qemu-system-x86
    local apt=(apt-get install -y --no-install-recommends "$pkg")
    if command -v apt-get >/dev/null 2>&1; then
        if [ "$(id -u)" -eq 0 ]; then
            echo "qemu-run.sh: $qemu not found; installing $pkg" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -q
            DEBIAN_FRONTEND=noninteractive "${apt[@]}"
        elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            echo "qemu-run.sh: $qemu not found; installing $pkg with sudo" >&2
            sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -q
            sudo -n env DEBIAN_FRONTEND=noninteractive "${apt[@]}"
        else
            echo "qemu-run.sh: QEMU is missing. Install it with:" >&2
            echo "    sudo apt-get update && sudo apt-get install -y $pkg" >&2
            exit 1
        fi
    else
        cat >&2 <<EOF
qemu-run.sh: QEMU ($qemu) is missing. Install the x86-64 system emulator:
    Debian/Ubuntu:  sudo apt-get install qemu-system-x86
    Fedora:         sudo dnf install qemu-system-x86
    Arch:           sudo pacman -S qemu-system-x86   (or qemu-full)
    macOS:          brew install qemu
or point QEMU=/path/to/qemu-system-x86_64 (or --qemu PATH) at an existing binary.
EOF
        exit 1
    fi
}

if [ "$need_qemu" -eq 1 ] && ! command -v "$qemu" >/dev/null 2>&1; then
    if [ -n "$qemu_explicit" ] || [ -n "${QEMU:-}" ]; then
        echo "qemu-run.sh: QEMU binary '$qemu' (given by --qemu or \$QEMU) not found" >&2
        exit 1
    fi
    install_qemu
    command -v "$qemu" >/dev/null 2>&1 || { echo "qemu-run.sh: $qemu still not found after installing" >&2; exit 1; }
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "qemu-run.sh: cargo not found: install Rust (stable) first, e.g. via https://rustup.rs" >&2
    exit 1
fi

# Build the harness and hand over (cargo run execs it; the harness builds the
# kernel with `cargo build --release -p sluice-kernel` when it needs it).
exec cargo run --quiet --release -p sluice-harness -- "$@"
