#!/usr/bin/env bash
# Installs the vhost-user-gpu backend laid out as a distribution package would ship it, so
# that libvirt (and anything following QEMU's vhost-user backend discovery,
# docs/interop/vhost-user.json) finds it:
#
#   PREFIX/libexec/dmabuf-virtio-gpu/vhost-user-gpu          the backend (its own directory:
#                                                            QEMU's is PREFIX/libexec/vhost-user-gpu)
#   PREFIX/share/qemu/vhost-user/60-dmabuf-virtio-gpu.json   the descriptor ("binary": the path above)
#   PREFIX/share/man/man1/vhost-user-gpu.1                   the man page
#   PREFIX/share/doc/dmabuf-virtio-gpu/                      README-launch.md, the licences
#
#   vhost-user-gpu/install.sh [--prefix DIR] [--binary FILE]
#
#   --prefix DIR   default /usr: libvirt reads descriptors from /usr/share/qemu/vhost-user
#                  (and /etc/qemu/vhost-user, ~/.config/qemu/vhost-user), not from other prefixes.
#   --binary FILE  install this backend binary; default: build it with
#                  `cargo install --locked --path vhost-user-gpu` into a staging directory
#                  (release profile, reusing the workspace's target/ directory).
#   DESTDIR        (environment) stage everything under this directory, as packagers do; the
#                  descriptor still names PREFIX/libexec/..., where the package puts the binary.
#
# The descriptor's "60-" sorts after QEMU's own 50-qemu-gpu.json, so installing this does not
# replace QEMU's backend for existing VMs; README-launch.md says how to prefer this one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix=/usr
binary=
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --binary) binary="${2:?--binary needs a file}"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) ;;
  *) echo "install.sh: --prefix must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac
case "$prefix" in
  *[\"\\\|\&]*) echo "install.sh: --prefix must not contain any of \" \\ | & (it goes into JSON)" >&2; exit 2 ;;
esac
prefix="${prefix%/}"
destdir="${DESTDIR:-}"

if [ -z "$binary" ]; then
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  echo "== cargo install --locked --path $here (staging in $stage)"
  cargo install --locked --path "$here" --root "$stage" --bin vhost-user-gpu --quiet
  binary="$stage/bin/vhost-user-gpu"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable file" >&2; exit 2; }

libexec="$prefix/libexec/dmabuf-virtio-gpu/vhost-user-gpu"
descriptor="$prefix/share/qemu/vhost-user/60-dmabuf-virtio-gpu.json"
man="$prefix/share/man/man1/vhost-user-gpu.1"
doc="$prefix/share/doc/dmabuf-virtio-gpu"

install -D -m 0755 "$binary" "$destdir$libexec"
install -d -m 0755 "$(dirname "$destdir$descriptor")"
# The committed descriptor names /usr/libexec/...; point it at this prefix.
sed "s|\"/usr/libexec/dmabuf-virtio-gpu/vhost-user-gpu\"|\"$libexec\"|" \
  "$here/share/60-dmabuf-virtio-gpu.json" > "$destdir$descriptor"
chmod 0644 "$destdir$descriptor"
grep -q "\"binary\": \"$libexec\"" "$destdir$descriptor" \
  || { echo "install.sh: the descriptor template has no binary line to rewrite" >&2; exit 1; }
install -D -m 0644 "$here/share/vhost-user-gpu.1" "$destdir$man"
install -d -m 0755 "$destdir$doc"
install -m 0644 "$here/README-launch.md" "$here/LICENSE-APACHE" "$here/LICENSE-BSD-3-Clause" "$destdir$doc/"

for f in "$libexec" "$descriptor" "$man" "$doc/"; do echo "installed $destdir$f"; done
echo "capabilities on this host: $("$destdir$libexec" --print-capabilities)"
if [ "$prefix" != /usr ]; then
  echo "note: libvirt looks for descriptors in /usr/share/qemu/vhost-user, /etc/qemu/vhost-user and"
  echo "      ~/.config/qemu/vhost-user; link $descriptor into one of them"
fi
