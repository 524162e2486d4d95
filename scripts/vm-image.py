#!/usr/bin/env python3
"""Builds the guest image of the `vm` provisioner from registry packages, cached in OUT:

  OUT/vmlinux-<release>          Debian's kernel (linux-image-amd64's current package),
                                 unpacked from its vmlinuz: qemu boots it directly (faster)
  OUT/initramfs-<key>.cpio.gz    /init = the given wafer binary (the guest agent) with the
                                 shared libraries it links, and the virtio modules it loads
  OUT/image.json                 {"kernel", "initramfs", "release"}: what to boot

The kernel package is fetched with `apt-get download` (never installed); the initramfs is
rebuilt when the wafer binary or the kernel changes. Usage: vm-image.py OUT WAFER_BIN
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Debian's kernel builds these as modules; loaded in this order (each after what it needs).
MODULES = [
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/char/virtio_console.ko",
]


def kernel_package() -> str:
    """The versioned package linux-image-amd64 depends on now (e.g. linux-image-6.1.0-57-amd64)."""
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], check=True, capture_output=True, text=True).stdout
    m = re.search(r"Depends: (linux-image-\d\S*)", out)
    if not m:
        sys.exit(f"vm-image: cannot tell the kernel package from: {out!r}")
    return m.group(1)


def fetch_kernel(out: Path, package: str) -> tuple[Path, Path]:
    """vmlinux and the modules directory of `package`, downloaded once."""
    release = package.removeprefix("linux-image-")
    vmlinux = out / f"vmlinux-{release}"
    modules = out / f"modules-{release}"
    if vmlinux.exists() and modules.exists():
        return vmlinux, modules
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        subprocess.run(["apt-get", "download", package], check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        deb = next(Path(tmp).glob("*.deb"))
        root = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        packed = (root / "boot" / f"vmlinuz-{release}").read_bytes()
        start = packed.find(b"\xfd7zXZ\x00")
        if start < 0:
            sys.exit("vm-image: the kernel is not xz-compressed as expected")
        part = vmlinux.with_suffix(".part")
        part.write_bytes(lzma.LZMADecompressor().decompress(packed[start:]))
        src = root / "lib" / "modules" / release
        dst = Path(tmp) / "modules"
        dst.mkdir()
        for m in MODULES:
            shutil.copy(src / m, dst / Path(m).name)
        if modules.exists():
            shutil.rmtree(modules)
        dst.rename(modules)
        part.rename(vmlinux)
    return vmlinux, modules


def libraries(binary: Path) -> list[Path]:
    """The shared libraries `binary` loads, with the dynamic loader."""
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


class Cpio:
    """A newc cpio archive (what the kernel unpacks as its initramfs), written in memory."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08x" % f for f in fields) + encoded)
        self.buf.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(out: Path, wafer: Path, modules: Path) -> Path:
    libs = libraries(wafer)
    key = hashlib.sha256()
    for p in [wafer, *libs, *sorted(modules.iterdir())]:
        key.update(p.read_bytes())
    target = out / f"initramfs-{key.hexdigest()[:16]}.cpio.gz"
    if target.exists():
        return target
    a = Cpio()
    dirs = {"dev", "proc", "sys", "lib", "lib/modules", "tmp"}
    for lib in libs:
        parts = lib.parent.relative_to("/").parts
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    for d in sorted(dirs):
        a.dir(d)
    # The kernel opens /dev/console for init's stdio before anything is mounted.
    a.char_device("dev/console", 5, 1)
    a.file("init", wafer.read_bytes(), 0o755)
    for lib in libs:
        a.file(str(lib.relative_to("/")), lib.read_bytes(), 0o755)
    names = [Path(m).name for m in MODULES]
    for n in names:
        a.file(f"lib/modules/{n}", (modules / n).read_bytes())
    a.file("lib/modules/wafer.order", ("\n".join(names) + "\n").encode())
    part = target.with_suffix(".part")
    part.write_bytes(gzip.compress(a.finish(), compresslevel=1))
    part.rename(target)
    return target


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, wafer = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    package = kernel_package()
    vmlinux, modules = fetch_kernel(out, package)
    initramfs = build_initramfs(out, wafer, modules)
    image = {"kernel": str(vmlinux), "initramfs": str(initramfs), "release": package.removeprefix("linux-image-")}
    (out / "image.json").write_text(json.dumps(image, indent=2) + "\n")
    print(json.dumps(image))


if __name__ == "__main__":
    main()
