#!/bin/sh
# Runs tests/real_exporters.rs inside a throwaway QEMU (TCG) guest that has real dma-buf
# exporters: udmabuf, the system dma-heap and vgem.
#
# usage: guest-real-exporters.sh VMLINUZ MODULES_DIR
#   VMLINUZ      e.g. .../boot/vmlinuz-6.12.*+deb12-amd64 (UDMABUF=y, DMABUF_HEAPS_SYSTEM=y)
#   MODULES_DIR  e.g. .../lib/modules/6.12.*+deb12-amd64 (for drm, drm_kms_helper,
#                drm_shmem_helper and vgem; .ko or .ko.xz)
# needs: qemu-system-x86_64, busybox-static, cpio, xz, cargo. Exit status 0 = all passed.
set -eu
VMLINUZ=$1
MODULES=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TARGET=$(rustc -vV | sed -n 's/^host: //p')

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/../target}/static"
EXE=$(cd "$HERE" && RUSTFLAGS="-C target-feature=+crt-static" \
	cargo test -p dmabuf-info --test real_exporters --no-run --target "$TARGET" 2>&1 |
	sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -x "$EXE" ] || { echo "could not build the static test binary" >&2; exit 1; }

R=$WORK/root
mkdir -p "$R/bin" "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/lib/modules"
cp "$(command -v busybox)" "$R/bin/busybox"
cp "$EXE" "$R/bin/real_exporters"
cp "$CARGO_TARGET_DIR/$TARGET/debug/dmabuf-info" "$R/bin/dmabuf-info"
for m in drm drm_kms_helper drm_shmem_helper vgem; do
	f=$(find "$MODULES" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
	[ -n "$f" ] || { echo "module $m not found under $MODULES" >&2; exit 1; }
	case $f in
	*.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
	*) cp "$f" "$R/lib/modules/$m.ko" ;;
	esac
done
cat > "$R/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in drm drm_kms_helper drm_shmem_helper vgem; do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
/bin/real_exporters --test-threads 1 --color never
echo "REAL-EXPORTERS-RESULT=$?"
poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$WORK/initrd.gz"
timeout 300 qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
	-kernel "$VMLINUZ" -initrd "$WORK/initrd.gz" \
	-append "console=ttyS0 quiet panic=-1" > "$WORK/console.log" 2>&1 || true
sed -n '/^running /,/REAL-EXPORTERS-RESULT/p' "$WORK/console.log"
grep -q "REAL-EXPORTERS-RESULT=0" "$WORK/console.log"
