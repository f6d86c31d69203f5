"""hostagent: host-health and maintenance agent for Xen/KVM hosts on Linux md RAID."""

__version__ = "0.1.0"
