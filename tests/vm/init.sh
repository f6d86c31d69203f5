#!/bin/sh
# /init of the test VM: mount the kernel filesystems, load modules, serve commands on ttyS1.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin DM_DISABLE_UDEV=1 PYTHONPATH=/opt/hostagent HOME=/root
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
for module in $(cat /etc/modules.order); do insmod "/lib/modules/$module" || echo "insmod $module failed"; done
# booted through UEFI firmware (VM(firmware="uefi")): the variables, as efibootmgr reads them
if [ -d /sys/firmware/efi/efivars ]; then mount -t efivarfs efivarfs /sys/firmware/efi/efivars; fi
echo "hostagent-vm: init done"
exec python3 /opt/guest_server.py /dev/ttyS1
