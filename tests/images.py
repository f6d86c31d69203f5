"""Real disk images for boot tests: sfdisk, loop devices, mkfs and grub-install, as on a host.

Every loop device and mount is released in a finally block, whatever fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SIZE_MIB = 64
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
LAYOUTS = {
    "mbr": "label: dos\nstart=2048, type=fd\n",
    "gpt-bios": f"label: gpt\nstart=2048, size=2048, type={BIOS_BOOT}\nstart=4096, type={LINUX}\n",
    "gpt-esp": f"label: gpt\nstart=2048, size=65536, type={ESP}\nstart=67584, type={LINUX}\n",
}


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def attached(image: Path) -> Iterator[str]:
    """The image as a loop device with partition nodes (made by hand where no udev runs)."""
    loop = run("losetup", "-f", "--show", str(image)).strip()
    try:
        run("partx", "-a", loop)
        name = Path(loop).name
        for entry in sorted(Path(f"/sys/block/{name}").glob(f"{name}p*")):
            node = Path("/dev") / entry.name
            if not node.exists():
                major, minor = (entry / "dev").read_text().strip().split(":")
                os.mknod(node, 0o600 | 0o060000, os.makedev(int(major), int(minor)))
        yield loop
    finally:
        subprocess.run(["partx", "-d", loop], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


@contextlib.contextmanager
def mounted(device: str) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="hostagent-mnt-"))
    run("mount", device, str(where))
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def build(directory: Path, kind: str) -> Path:
    """One of: mbr-grub, mbr-bare, gpt-bios-grub, gpt-bios-empty, gpt-esp-loader, gpt-esp-empty."""
    image = directory / f"{kind}.img"
    with image.open("wb") as handle:
        handle.truncate(SIZE_MIB * 1024 * 1024)
    layout = kind.rsplit("-", 1)[0]
    subprocess.run(["sfdisk", "-q", str(image)], input=LAYOUTS[layout], text=True, check=True, capture_output=True)
    with attached(image) as loop:
        root = f"{loop}p1" if layout == "mbr" else f"{loop}p2"
        run("mkfs.ext4", "-q", root)
        if layout == "gpt-esp":
            run("mkfs.vfat", f"{loop}p1")
        if kind.endswith(("grub", "empty")) and layout != "gpt-esp":
            with mounted(root) as mnt:
                run("grub-install", "--target=i386-pc", f"--boot-directory={mnt}/boot", loop)
        if kind == "gpt-bios-empty":
            run("dd", "if=/dev/zero", f"of={loop}p1", "bs=512", "count=2048", "status=none")
        if kind == "gpt-esp-loader":
            # This machine's kernel has no vfat: build GRUB's EFI image and copy it in with mtools.
            loader = directory / "BOOTX64.EFI"
            if not loader.exists():
                run("grub-mkimage", "-O", "x86_64-efi", "-o", str(loader), "-p", "/EFI/BOOT",
                    "part_gpt", "fat", "ext2", "normal", "configfile", "search")
            run("mmd", "-i", f"{loop}p1", "::/EFI", "::/EFI/BOOT")
            run("mcopy", "-i", f"{loop}p1", str(loader), "::/EFI/BOOT/BOOTX64.EFI")
    return image


KINDS = ("mbr-grub", "mbr-bare", "gpt-bios-grub", "gpt-bios-empty", "gpt-esp-loader", "gpt-esp-empty")
