# hostagent: `make demo` and `make test` install what they need first (apt packages when
# missing and we are root, and a .venv with the project installed editable).

PYTHON ?= python3
# This machine's environment sets PYTHONDONTWRITEBYTECODE=1, and an editable install then compiles
# every module at every start: each of the suite's thousands of hostagent processes paid for it
# (docs/testing.md, "Suite time").  Bytecode goes to __pycache__ (ignored by git), as on any host.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := python3 python3-venv python3-pip python3-dev gcc openssl
# libvirt-python is sdist-only: it builds against libvirt-dev
APT_PACKAGES += libvirt-dev pkg-config
# the VM suite (tests/vm): Debian's kernel under QEMU with real md, dm and mdadm
APT_PACKAGES += qemu-system-x86 linux-image-amd64 mdadm dmsetup busybox-static cpio kmod smartmontools
# bootloader tests (tests/images.py): real GRUB (BIOS and EFI) on loop-device images; sgdisk for
# copying GPT tables in disk replace
APT_PACKAGES += grub-pc-bin grub2-common grub-efi-amd64-bin parted fdisk e2fsprogs dosfstools mtools efibootmgr gdisk
# the UEFI boot tests (tests/vm/test_boot_uefi.py): the guests boot through OVMF
APT_PACKAGES += ovmf
# maintenance with real guests (qemu:///embed) and the libvirt-guests benchmark: the QEMU driver,
# the libvirt-qemu user, virsh and libvirt-guests.sh
APT_PACKAGES += libvirt-daemon-system libvirt-clients
# the test guests run QEMU's guest agent (tests/guests.py), so restored guests get their clocks set
APT_PACKAGES += qemu-guest-agent
# the fleet controller's tests: real sshds in network namespaces, and the status page in a browser
APT_PACKAGES += openssh-server openssh-client iproute2 chromium
# the Ansible install test: a Debian 12 rootfs (debootstrap) booted under QEMU
APT_PACKAGES += debootstrap
# network attack tests: the host-side capture, and a real authoritative DNS server for audit-dns
# (the tests run their own nsd on loopback; the system service we install is stopped and disabled)
APT_PACKAGES += tcpdump nsd
# monitoring: promtool (check metrics on the textfile and the fleet's metrics) and visudo (the sudoers
# line in docs/monitoring.md); the prometheus service the package brings is stopped and disabled
APT_PACKAGES += prometheus sudo
# libvirt's hook on btrfs (tests/unit/test_gate.py): /proc/locks names the superblock, st_dev the subvolume
APT_PACKAGES += btrfs-progs

.PHONY: demo test test-fast lint fuzz bench bench-hung bench-alert bench-idle bench-maintenance bench-journals bench-xen bench-fleet bench-net deps apt clean

deps: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing apt packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	    case "$$missing " in *" nsd "*) systemctl disable --now nsd.service >/dev/null 2>&1 || true;; esac; \
	    case "$$missing " in *" prometheus "*) systemctl disable --now prometheus.service >/dev/null 2>&1 || true;; esac; \
	  else echo "missing apt packages:$$missing (run make as root, or install them)" >&2; exit 1; fi; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,agent,libvirt,controller]'
	touch $@

demo: deps
	@echo "== hostagent check on this machine"; $(BIN)/hostagent check || true
	@for host in examples/hosts/*/; do \
	  echo; echo "== hostagent check --root $$host"; $(BIN)/hostagent check --root $$host || true; \
	done

lint: deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	cd ansible && PATH=$(CURDIR)/$(BIN):$$PATH ansible-lint --profile production
	cd ansible && $(CURDIR)/$(BIN)/ansible-playbook --syntax-check -i inventory.example.ini site.yml maintenance.yml

# The Xen module (one dom0 under TCG, the suite's longest chain) runs beside the rest of the suite:
# two cores, two pytest processes. tests/suite.py starts it first, runs the linters, make fuzz and
# the rest beside it, prints the Xen module's output after the rest's, then each part's wall time
# (kept in .cache/suite-times.json) and one closing line for both: a lint failure stops both.
SUITE_STARTED := $(shell date +%s.%N)

test: deps
	@SUITE_STARTED=$(SUITE_STARTED) $(BIN)/python tests/suite.py

# every parser under hypothesis with a fixed budget (tests/fuzz/conftest.py), in a process whose
# address space is capped: unbounded memory fails the run as surely as a crash or a hang
FUZZ_MEMORY := 2147483648
fuzz: deps
	prlimit --as=$(FUZZ_MEMORY) $(BIN)/pytest -q -p no:cacheprovider tests/fuzz

test-fast: lint fuzz
	$(BIN)/pytest -m "not vm" --ignore=tests/fuzz

bench-alert: deps
	$(BIN)/python bench/bench_alert_latency.py

bench-idle: deps
	$(BIN)/python bench/bench_watch_idle.py 600

# fleet polling against Ansible and plain ssh over real sshds in network namespaces (about 3 min)
bench-fleet: deps
	$(BIN)/python bench/bench_fleet.py --sizes 50,200

# guest downtime against libvirt-guests (starts libvirtd when it is not running; about 2 min)
bench-maintenance: deps
	$(BIN)/python bench/bench_maintenance.py --rounds 3

# 4 PV guests on a Xen dom0 under QEMU: hostagent's xl path against Debian's xendomains (about 10 min)
bench-xen: deps
	$(BIN)/python bench/bench_xen.py --rounds 3

# /proc/net/tcp with 100 k sockets against psutil.net_connections() (about 30 s)
# reading 100, 1,000 and 4,000 maintenance journals: every file parsed, unchanged files, after pruning
bench-journals: deps
	$(BIN)/python bench/bench_journals.py

bench-net: deps
	$(BIN)/python bench/bench_netproc.py

bench-hung: deps
	$(BIN)/python bench/bench_hung.py

bench: deps
	$(BIN)/python bench/bench_md.py
	$(BIN)/python bench/bench_smart.py

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
