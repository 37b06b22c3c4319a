"""Instance disks: qcow2 overlays on read-only image disks."""
