"""Bootloader on every member disk of the arrays that back /, /boot and /boot/efi.

If a disk fails, the host must boot from a survivor.  This check reads each member disk's
first sectors and ESPs directly (no mounting, no tools), in a child process per disk so a
hung disk cannot hang the agent: BIOS boot code and GRUB's core.img, or an ESP with a loader,
ESP contents that match across members, and a firmware boot entry for every ESP.
``blockers`` gives other code (the maintenance preflight) the findings that forbid a reboot.
"""

from __future__ import annotations

from checks.hung import disk_is_hung
from hostagent.context import CheckContext
from hostagent.errors import HostagentError, ParseError
from hostagent.host import DeviceReader, Host
from hostagent.inventory import MdArray
from hostagent.model import Finding, Remedy, Severity
from hostagent.records import field, record
from hostagent.sources.blockdev import parent_disks
from hostagent.sources.bootcode import BootCode, grub_core_present, identify
from hostagent.sources.efiboot import BootEntry, parse_efibootmgr
from hostagent.sources.fat import FatVolume, efi_loaders
from hostagent.sources.mounts import boot_arrays
from hostagent.sources.partitions import (
    Partition,
    PartitionTable,
    parse_gpt_entries,
    parse_gpt_header,
    parse_mbr,
)

NAME = "boot"
DESCRIPTION = "a working bootloader on every member disk of the boot arrays"
BLOCKING = ("boot.missing_on_member", "boot.core_missing", "boot.esp_missing", "boot.unreadable")
HEAD_BYTES = 64 * 1024
ESP_COPY = "/run/hostagent/esp-copy"  # where an ESP sync stages the good EFI directory
# mtools refuses a FAT whose "hidden sectors" field disagrees with the disk's geometry, which mkfs.fat
# on a partition often leaves: the check is about floppies (grub-mkrescue skips it the same way)
MTOOLS = ("env", "MTOOLS_SKIP_CHECK=1")


@record(frozen=True)
class Config:
    enabled: bool = True
    arrays: tuple[str, ...] = ()
    timeout: float = 10.0


@record(frozen=True)
class Esp:
    partition: Partition
    device: str  # /dev/sda1
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def loaders(self) -> list[str]:
        return efi_loaders(self.files)


@record(frozen=True)
class DiskBoot:
    disk: str
    table: PartitionTable | None = None
    code: BootCode | None = None
    core: str | None = None  # where GRUB's core.img was found, or None
    esps: tuple[Esp, ...] = ()
    error: str | None = None


def partition_device(disk: str, number: int) -> str:
    return f"/dev/{disk}{'p' if disk[-1].isdigit() else ''}{number}"


def inspect_disk(host: Host, disk: str, timeout: float) -> DiskBoot:
    """Read what boots from ``disk``; any fault becomes DiskBoot.error naming the device."""
    path = f"/dev/{disk}"
    size_text = (host.read_optional(f"/sys/block/{disk}/queue/logical_block_size") or "512").strip()
    sector = int(size_text) if size_text.isdigit() else 512
    try:
        with host.open_device(path, timeout) as device:
            head = device.read(0, HEAD_BYTES)
            source = path
            if len(head) < 512:
                raise ParseError(source, None, f"truncated: only {len(head)} bytes readable")
            mbr = parse_mbr(head[:512], source)
            if any(p.type == "0xee" for p in mbr):
                header = head[sector:2 * sector] if len(head) >= 2 * sector else device.read(sector, sector)
                entries_lba, count, size, crc = parse_gpt_header(header, source)
                start = entries_lba * sector
                raw = head[start:start + count * size] if start + count * size <= len(head) else device.read(
                    start, count * size)
                table = PartitionTable("gpt", tuple(parse_gpt_entries(raw, count, size, crc, source)), sector)
            else:
                table = PartitionTable("mbr" if mbr else "none", tuple(mbr), sector)
            code = identify(head[:512])
            core = None
            if code.loader == "grub2" and code.core_lba is not None:
                lba = code.core_lba
                sector_bytes = head[lba * 512:(lba + 1) * 512] if (lba + 1) * 512 <= len(head) else device.read(
                    lba * 512, 512)
                if grub_core_present(sector_bytes, lba):
                    holder = next((p for p in table.partitions if p.first_lba <= lba <= p.last_lba), None)
                    core = (f"BIOS boot partition {holder.number}" if holder and holder.is_bios_boot
                            else "post-MBR gap" if holder is None else f"partition {holder.number}")
            esps = []
            for partition in table.partitions:
                if partition.is_esp:
                    name = partition_device(disk, partition.number)
                    if host.is_snapshot or not host.exists(name):
                        esps.append(_read_esp(device, partition, partition.first_lba * sector, name))
                        continue
                    # through the partition's own device, whose page cache is the one that mtools
                    # (boot repair) and a mounted /boot/efi write through: the whole disk's cache can
                    # still hold what the ESP was before they wrote
                    with host.open_device(name, timeout) as own:
                        esps.append(_read_esp(own, partition, 0, name))
    except (HostagentError, OSError) as err:
        return DiskBoot(disk, error=str(err))
    return DiskBoot(disk, table, code, core, tuple(esps))


def _read_esp(device: DeviceReader, partition: Partition, base: int, name: str) -> Esp:
    try:
        volume = FatVolume(lambda offset, length: device.read(base + offset, length), name)
        return Esp(partition, name, volume.files())
    except ParseError as err:
        return Esp(partition, name, error=str(err))


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    critical = boot_arrays(ctx.host)
    for name in config.arrays:
        critical.setdefault(name, [])
    ctx.examine(NAME, len(critical), "boot arrays")
    if not critical:
        return []
    arrays = {a.name: a for a in ctx.inventory.arrays()}
    disks: dict[str, DiskBoot] = {}
    plan: list[tuple[MdArray, list[str], list[str]]] = []
    findings = []
    for name, mounts in sorted(critical.items()):
        array = arrays.get(name)
        if array is None:
            findings.append(Finding("boot.unreadable", NAME, name, Severity.UNKNOWN,
                                    f"{name} is configured as a boot array but does not exist"))
            continue
        members = [m for m in array.members if "faulty" not in m.states and "spare" not in m.states]
        member_disks: list[str] = []
        for member in members:
            for disk in parent_disks(ctx.host, member.device):
                if disk not in member_disks:
                    member_disks.append(disk)
        for disk in member_disks:
            if disk in disks:
                continue
            if disk_is_hung(ctx, disk):
                disks[disk] = DiskBoot(disk, error=f"/dev/{disk} is hung (see disk.hung): not read")
            else:
                disks[disk] = inspect_disk(ctx.host, disk, config.timeout)
        plan.append((array, mounts, member_disks))
    efi = ctx.host.exists("/sys/firmware/efi")
    entries: list[BootEntry] | None = None
    if efi:
        try:
            result = ctx.host.run("efibootmgr", ["-v"], name="efibootmgr-v.txt", timeout=config.timeout)
            entries = parse_efibootmgr(result.stdout)[0] if result.returncode == 0 else None
        except HostagentError:
            entries = None
    for array, mounts, member_disks in plan:
        findings += evaluate(array, mounts, [disks[d] for d in member_disks], efi, entries)
    return _unique(findings)


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, result = set(), []
    for finding in findings:
        if (finding.code, finding.subject) not in seen:
            seen.add((finding.code, finding.subject))
            result.append(finding)
    return result


def evaluate(array: MdArray, mounts: list[str], disks: list[DiskBoot], efi: bool,
             entries: list[BootEntry] | None) -> list[Finding]:
    """Findings for one boot array whose member disks were inspected (pure)."""
    findings = []
    where = f"{array.name} ({', '.join(mounts) or 'configured boot array'})"
    names = [d.disk for d in disks]

    def cannot_boot(disk: str, code: str, why: str, remedy: Remedy) -> Finding:
        others = [n for n in names if n != disk]
        lead = (f"if {' and '.join(others)} fail{'s' if len(others) == 1 else ''}, {where} survives on {disk}, "
                if others else f"{where} lives on {disk} alone, and ")
        return Finding(code, NAME, disk, Severity.CRITICAL, f"{lead}but {disk} cannot boot: {why}",
                       f"firmware: {'UEFI' if efi else 'BIOS'}; members: {', '.join(names)}", remedy)

    good_esp = next((e for d in disks for e in d.esps if e.loaders and not e.error), None)
    for disk in disks:
        if disk.error:
            findings.append(Finding("boot.unreadable", NAME, disk.disk, Severity.UNKNOWN,
                                    f"cannot tell whether {disk.disk} boots: {disk.error}"))
            continue
        grub = Remedy(f"Install GRUB on {disk.disk}", "Every member of a boot array must be able to boot alone.",
                      (("grub-install", "--target=i386-pc", f"/dev/{disk.disk}"),))
        if not efi:
            code = disk.code
            if code is None or code.loader is None:
                findings.append(cannot_boot(disk.disk, "boot.missing_on_member", "no boot code in its MBR", grub))
            elif code.loader == "grub2" and disk.core is None:
                why = ("its GPT has no BIOS boot partition for GRUB's core.img"
                       if disk.table and disk.table.scheme == "gpt"
                       and not any(p.is_bios_boot for p in disk.table.partitions)
                       else "GRUB's boot code is there but its core.img is not where it points")
                findings.append(cannot_boot(disk.disk, "boot.core_missing", why, grub))
            elif code.loader != "grub2":
                findings.append(Finding("boot.unknown_loader", NAME, disk.disk, Severity.INFO,
                                        f"{disk.disk} has a {code.loader} boot loader; hostagent cannot tell "
                                        f"whether it boots {where}"))
            continue
        if not disk.esps:
            findings.append(cannot_boot(disk.disk, "boot.esp_missing", "it has no EFI system partition", Remedy(
                f"Partition {disk.disk} like the other members, with an ESP, then run hostagent boot repair",
                "Without an ESP the firmware has nothing to load from this disk.")))
            continue
        for esp in disk.esps:
            device = esp.device
            if esp.error:
                findings.append(Finding("boot.unreadable", NAME, disk.disk, Severity.UNKNOWN,
                                        f"cannot read the ESP {device}: {esp.error}"))
            elif not esp.loaders:
                findings.append(cannot_boot(disk.disk, "boot.missing_on_member",
                                            f"its ESP {device} holds no EFI loader", _esp_sync(good_esp, disk, esp)))
            elif good_esp is not None and esp.files != good_esp.files:
                differ = sorted(set(esp.files.items()) ^ set(good_esp.files.items()))
                paths = sorted({path for path, _ in differ})
                findings.append(Finding(
                    "boot.esp_out_of_sync", NAME, disk.disk, Severity.WARNING,
                    f"the ESP {device} differs from the other members' ESP: {', '.join(paths[:5])}"
                    + (f" and {len(paths) - 5} more" if len(paths) > 5 else ""),
                    "After a bootloader update only one ESP is usually refreshed.", _esp_sync(good_esp, disk, esp)))
            if entries is not None and esp.partition.unique_guid and not any(
                    e.partition_guid == esp.partition.unique_guid for e in entries):
                loader = "\\" + (esp.loaders[0] if esp.loaders else "/EFI/BOOT/BOOTX64.EFI").lstrip("/").replace(
                    "/", "\\")
                findings.append(Finding(
                    "boot.no_boot_entry", NAME, disk.disk, Severity.WARNING,
                    f"no firmware boot entry points at the ESP {device}: if the other disks fail, the firmware "
                    "may not try this one",
                    f"ESP partition GUID {esp.partition.unique_guid}",
                    Remedy(f"Add a boot entry for {device}", "",
                           (("efibootmgr", "--create", "--disk", f"/dev/{disk.disk}", "--part",
                             str(esp.partition.number), "--label", f"hostagent {disk.disk}", "--loader", loader),)),
                ))
    return findings


def _esp_sync(good: Esp | None, disk: DiskBoot, esp: Esp) -> Remedy:
    target = esp.device
    if good is None:
        return Remedy(f"Reinstall the EFI boot loader onto {target} (no member has a good ESP to copy)", "")
    # files only the stale ESP has go too; an ESP with nothing under /EFI has nothing to delete (and
    # mdeltree fails on a missing directory), so the copy alone fills it
    stale = any(path.startswith("/EFI/") for path in esp.files)
    return Remedy(
        f"Copy the EFI directory from a good ESP to {target}",
        "Members' ESPs must hold the same loaders, so any survivor boots the same way.",
        (("rm", "-rf", "--", ESP_COPY), ("mkdir", "-p", "-m", "0700", "--", ESP_COPY),
         (*MTOOLS, "mcopy", "-s", "-o", "-i", good.device, "::/EFI", f"{ESP_COPY}/"),
         *(((*MTOOLS, "mdeltree", "-i", target, "::/EFI"),) if stale else ()),
         (*MTOOLS, "mcopy", "-s", "-o", "-i", target, f"{ESP_COPY}/EFI", "::/")),
    )


def blockers(ctx: CheckContext, config: Config | None = None) -> list[Finding]:
    """Open findings that mean some member could not boot the host: the reboot interlock."""
    return [f for f in run(ctx, config or Config()) if f.code in BLOCKING]
