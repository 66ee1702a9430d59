#!/usr/bin/env bash
# Unpack QEMU 10 from Debian bookworm-backports into target/qemu10/ without installing it
# (Debian 12's own qemu-system-x86 is 7.2 and stays). Prints the path of a wrapper that
# runs it with its own firmware: use it as `./qemu-run.sh --qemu <that path> ...`.
#
# Needs a Debian 12 machine (its apt keyring and sources). Idempotent.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
dest="$PWD/target/qemu10"
wrapper="$dest/qemu-system-x86_64"
if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then
    echo "$wrapper"
    exit 0
fi
mkdir -p "$dest/apt/lists/partial" "$dest/debs"
# A sources file that copies the machine's Debian entry with the backports suite.
cat >"$dest/apt/backports.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o "Dir::Etc::sourcelist=$dest/apt/backports.sources" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$dest/apt/lists" -o "Dir::Cache::Archives=$dest/debs" -q)
apt-get "${apt_opts[@]}" update >&2
(cd "$dest/debs" && apt-get "${apt_opts[@]}" download qemu-system-x86 qemu-system-data seabios >&2)
for deb in "$dest"/debs/*.deb; do
    dpkg -x "$deb" "$dest/root"
done
cat >"$wrapper" <<WRAP
#!/bin/sh
# QEMU 10 from bookworm-backports, with its own firmware. -nodefaults/-audio none keep it
# from loading QEMU 7.2's modules if that is installed too.
exec "$dest/root/usr/bin/qemu-system-x86_64" -L "$dest/root/usr/share/qemu" -L "$dest/root/usr/share/seabios" "\$@"
WRAP
chmod +x "$wrapper"
"$wrapper" --version >&2
echo "$wrapper"
