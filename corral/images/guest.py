"""What every Debian image gets from Corral's builder: the guest side of the interface between
host and image (network by DHCP, identity and user-data from the metadata service at
169.254.169.254 through cloud-init, a root file system that grows to the disk on first boot)."""

from __future__ import annotations

CLOUD_CFG = """\
# Written by Corral's image builder: Corral's metadata service answers in EC2's layout.
datasource_list: [Ec2, None]
datasource:
  Ec2:
    strict_id: false
    metadata_urls: ["http://169.254.169.254"]
    max_wait: 120
    timeout: 10
# the image configures its network itself (DHCP on every ethernet link, below)
network:
  config: disabled
manage_etc_hosts: true
# grow the root partition and its file system to the instance's disk on first boot
growpart:
  mode: auto
  devices: ["/"]
resize_rootfs: true
# C.UTF-8 is always there (no locale generation at boot); no DSA host key (obsolete, slow)
locale: C.UTF-8
ssh_genkeytypes: [ed25519, ecdsa, rsa]
"""

NETWORK = """\
# Written by Corral's image builder: DHCP on every ethernet link (Corral's dnsmasq answers).
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
# cloud-init sets the host name from the metadata service
UseHostname=false
"""

FSTAB = "/dev/vda1 / ext4 defaults,errors=remount-ro 0 1\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"

# file -> contents, written into the tree before packages are installed
FILES: dict[str, str] = {
    "/etc/cloud/cloud.cfg.d/90-corral.cfg": CLOUD_CFG,
    "/etc/systemd/network/80-corral.network": NETWORK,
    "/etc/fstab": FSTAB,
    "/etc/hosts": HOSTS,
}

# units that only cost boot time in a VM (e2scrub_reap checks LVM snapshots, there are none)
MASKED_UNITS = ["e2scrub_reap.service"]

# where a recipe's first_boot script goes: cloud-init runs it once per instance
FIRST_BOOT = "/var/lib/cloud/scripts/per-instance/50-corral-first-boot"

# packages the builder needs in every image besides the recipe's
REQUIRED = ["systemd-sysv", "udev", "initramfs-tools", "zstd"]

# generated at install time and unique per machine or per build: removed from the image
# (cloud-init and systemd make new ones on each instance's first boot)
REMOVE_GLOBS = [
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/cache/ldconfig/aux-cache",
    "var/cache/apt/*.bin",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "etc/*-",
    "var/lib/apt/lists/*",
    "var/cache/apt/archives/*.deb",
    "var/log/**/*",
    "root/.bash_history",
    "debootstrap",
]
