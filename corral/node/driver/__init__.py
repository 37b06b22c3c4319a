"""Hypervisor drivers: QEMU over QMP, the accelerator probe, cgroups."""
