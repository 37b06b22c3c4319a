#!/bin/sh
# runs once per instance (cloud-init per-instance scripts)
echo "first boot of $(hostname)" > /var/lib/corral-first-boot.out
