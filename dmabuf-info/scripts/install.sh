#!/bin/sh
# Installs dmabuf-info as a distribution would ship it:
#   BINDIR/dmabuf-info
#   LIBDIR/libdmabuf_info.so.MAJOR.MINOR.0, its SONAME link libdmabuf_info.so.MAJOR and the
#     development link libdmabuf_info.so; LIBDIR/libdmabuf_info.a
#   LIBDIR/pkgconfig/dmabuf-info.pc, INCLUDEDIR/dmabuf_info.h
#   MANDIR/man1/dmabuf-info*.1, DATADIR/dmabuf-info/quirks.d/ (vendor quirk files go there)
#
# usage: scripts/install.sh [--prefix DIR] [--libdir DIR] [--destdir DIR] [--from DIR]
#   --prefix  default /usr/local; bindir, includedir, datadir, mandir follow it
#   --libdir  default PREFIX/lib (Debian: PREFIX/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH))
#   --destdir staging root prepended to every path (packaging); the .pc file keeps the
#             final paths
#   --from    take the built files from DIR (or DIR/deps) instead of running
#             `cargo build --release -p dmabuf-info`
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
libdir=
destdir=
from=
while [ $# -gt 0 ]; do
	case $1 in
	--prefix) prefix=$2; shift 2 ;;
	--libdir) libdir=$2; shift 2 ;;
	--destdir) destdir=$2; shift 2 ;;
	--from) from=$2; shift 2 ;;
	*) echo "install.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
	esac
done
: "${libdir:=$prefix/lib}"
bindir=$prefix/bin
includedir=$prefix/include
datadir=$prefix/share
mandir=$datadir/man

if [ -z "$from" ]; then
	(cd "$here" && cargo build --release -p dmabuf-info)
	target=$(cd "$here" && cargo metadata --format-version 1 --no-deps |
		sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
	from=$target/release
fi

# An artifact from DIR, or DIR/deps (where `cargo test` leaves the library); when both
# exist, the newer one (a `cargo build` copy in DIR can be older than a later test build).
artifact() {
	found=
	for f in "$from/$1" "$from/deps/$1"; do
		[ -f "$f" ] || continue
		if [ -z "$found" ] || [ "$f" -nt "$found" ]; then found=$f; fi
	done
	[ -n "$found" ] && { echo "$found"; return; }
	echo "install.sh: $1 not found in $from or $from/deps" >&2
	exit 1
}
so=$(artifact libdmabuf_info.so)
a=$(artifact libdmabuf_info.a)
bin=$(artifact dmabuf-info)

# The SONAME the linker put into the library (build.rs), and the ABI version of the header.
soname=$(readelf -d "$so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
case $soname in
libdmabuf_info.so.[0-9]*) ;;
*) echo "install.sh: $so has no libdmabuf_info.so.N SONAME (got '$soname')" >&2; exit 1 ;;
esac
minor=$(sed -n 's/^#define DMABUF_INFO_ABI_MINOR \([0-9]*\)$/\1/p' "$here/include/dmabuf_info.h")
real=$soname.$minor.0
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml" | head -n 1)

install -d "$destdir$bindir" "$destdir$libdir/pkgconfig" "$destdir$includedir" \
	"$destdir$mandir/man1" "$destdir$datadir/dmabuf-info/quirks.d"
install -m 0755 "$bin" "$destdir$bindir/dmabuf-info"
install -m 0755 "$so" "$destdir$libdir/$real"
ln -sf "$real" "$destdir$libdir/$soname"
ln -sf "$soname" "$destdir$libdir/libdmabuf_info.so"
install -m 0644 "$a" "$destdir$libdir/libdmabuf_info.a"
install -m 0644 "$here/include/dmabuf_info.h" "$destdir$includedir/dmabuf_info.h"
for page in "$here"/man/*.1; do
	install -m 0644 "$page" "$destdir$mandir/man1/"
done
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
	-e "s|@VERSION@|$version|" "$here/dmabuf-info.pc.in" >"$destdir$libdir/pkgconfig/dmabuf-info.pc"
chmod 0644 "$destdir$libdir/pkgconfig/dmabuf-info.pc"
echo "installed dmabuf-info $version ($soname) under $destdir$prefix"
