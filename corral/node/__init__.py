"""The node agent: one per hypervisor host. Runs QEMU, wires networks in Corral's namespace,
keeps disks. Never imports the store, the API or the controller."""
