"""The guest side of an appliance: a user-data script that writes the service's config files and
installs a small helper, ``/etc/corral/appliance``, which at every boot mounts the data volumes
(found by their file system label), starts the service, and then:

* mounts a volume that arrives later (hot-plugged by a replace) and runs ``reload``;
* when its network cable is pulled and plugged back (Corral does that after moving this server's
  address to it) asks DHCP for its address again, takes its host name from the metadata
  service, announces the address (gratuitous ARP) and runs ``reload``.

It runs on both kinds of Corral guest: busybox (tiny: busybox ``uevent`` for hot-plug events,
a look at the link's carrier ten times a second that starts no process) and systemd (Debian: a
udev rule starts a unit per disk, ``ip monitor`` reports the link's changes, and
systemd-networkd re-runs DHCP on a carrier change by itself). POSIX sh only."""

from __future__ import annotations

HELPER = r"""#!/bin/sh
# Corral appliance helper (written by `corral apply`): boot | volume DEV | uevent | watch
. /etc/corral/appliance.env
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
log() {
    echo "$(date +%H:%M:%S) $*" >> /var/log/corral-appliance.log
    echo "corral-appliance: $*" > /dev/console 2>/dev/null
}
mount_volumes() {  # mount what is there and not mounted yet; say "new" if anything was
    for v in $VOLUMES; do
        label=${v%%:*}; dir=${v#*:}
        grep -q " $dir " /proc/mounts && continue
        dev=$(findfs "LABEL=$label" 2>/dev/null) || continue
        mkdir -p "$dir"
        if mount "$dev" "$dir"; then log "mounted $label ($dev) at $dir"; echo new; fi
    done
}
iface() {
    for d in /sys/class/net/*; do
        n=${d##*/}; [ "$n" = lo ] && continue
        [ -e "$d/device" ] && { echo "$n"; return; }
    done
}
address() {  # one process: `ip`; the shell takes the fourth word apart
    set -- $(ip -4 -o addr show dev "$1" 2>/dev/null)
    [ -n "${4:-}" ] && echo "${4%/*}"
}
metadata() {
    url="http://169.254.169.254/latest/meta-data/$1"
    if command -v wget > /dev/null; then timeout 3 wget -q -O - "$url" 2>/dev/null
    elif command -v curl > /dev/null; then curl -fs -m 3 "$url"
    else python3 -c "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], \
timeout=3).read().decode())" "$url" 2>/dev/null
    fi
}
readdress() {  # the address moved here: ask DHCP again, take the name, tell the neighbours
    dev=$1; before=$2  # what the link had when its cable was pulled
    if [ ! -d /run/systemd/system ]; then
        killall udhcpc 2>/dev/null
        udhcpc -i "$dev" -s /usr/share/udhcpc/default.script -t 20 -T 1 -A 1 -n -q \
            > /dev/null 2>&1
    fi
    i=0
    while [ -d /run/systemd/system ] && [ $i -lt 100 ]; do
        # systemd-networkd asks DHCP by itself on the carrier change: wait for the new lease
        now=$(address "$dev"); [ -n "$now" ] && [ "$now" != "$before" ] && break
        sleep 0.1; i=$((i + 1))
    done
    now=$(address "$dev")
    command -v arping > /dev/null && [ -n "$now" ] && arping -U -c 1 -I "$dev" "$now" \
        > /dev/null 2>&1
    h=; i=0
    while [ -z "$h" ] && [ $i -lt 5 ]; do  # a busy metadata service may miss an answer
        h=$(metadata local-hostname) || { sleep 1; h=; }
        i=$((i + 1))
    done
    h=${h%%.*}
    if [ -n "$h" ]; then
        hostname "$h"; echo "$h" > /etc/hostname
        command -v hostnamectl > /dev/null && hostnamectl set-hostname "$h" 2>/dev/null
    fi
    log "address ${before:-none} -> ${now:-none}, host name ${h:-unchanged}"
    /etc/corral/reload
}
case "$1" in
boot)
    mount_volumes > /dev/null
    if [ ! -d /run/systemd/system ]; then
        setsid uevent /etc/corral/appliance uevent < /dev/null > /dev/null 2>&1 &
        setsid /etc/corral/appliance watch < /dev/null > /dev/null 2>&1 &
    fi
    /etc/corral/run && log "service started"
    ;;
uevent)  # busybox uevent: one call per kernel event, described in the environment
    [ "$SUBSYSTEM" = block ] && [ "$ACTION" = add ] && [ -n "$DEVNAME" ] || exit 0
    exec /etc/corral/appliance volume "${DEVNAME##*/}"
    ;;
volume)
    i=0
    while [ ! -b "/dev/$2" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    if [ -n "$(mount_volumes)" ]; then /etc/corral/reload; log "reloaded after $2 arrived"; fi
    ;;
watch)
    dev=$(iface)
    [ -n "$dev" ] || exit 0
    if ip -V 2>&1 | grep -q iproute2; then  # link events from the kernel, no polling
        ip monitor link dev "$dev" | while read -r line; do
            case "$line" in
                *NO-CARRIER*) [ "${down:-0}" = 1 ] || had=$(address "$dev"); down=1 ;;
                *LOWER_UP*) [ "${down:-0}" = 1 ] && readdress "$dev" "$had"; down=0 ;;
            esac
        done
    else  # busybox: look at the carrier 10 times a second (read -t: no process per look)
        fifo=/run/corral-appliance.fifo
        rm -f "$fifo"; mkfifo "$fifo"; exec 3<> "$fifo"; last=1
        while :; do
            read -r c < "/sys/class/net/$dev/carrier" 2>/dev/null || c=0
            [ "$c" = 0 ] && [ "$last" = 1 ] && had=$(address "$dev")
            if [ "$c" = 1 ] && [ "$last" = 0 ]; then readdress "$dev" "$had"; fi
            last=$c
            read -r -t 0.1 -u 3 _ 2>/dev/null
        done
    fi
    ;;
esac
"""

UNITS = {
    "/etc/systemd/system/corral-appliance.service": """[Unit]
Description=Corral appliance: mount the data volumes, start the service
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/etc/corral/appliance boot

[Install]
WantedBy=multi-user.target
""",
    "/etc/systemd/system/corral-appliance-watch.service": """[Unit]
Description=Corral appliance: take over a moved address
After=network.target

[Service]
ExecStart=/etc/corral/appliance watch
Restart=always

[Install]
WantedBy=multi-user.target
""",
    "/etc/systemd/system/corral-volume@.service": """[Unit]
Description=Corral appliance: mount volume %i

[Service]
Type=oneshot
ExecStart=/etc/corral/appliance volume %i
""",
    "/etc/udev/rules.d/90-corral-volumes.rules": (
        'ACTION=="add", SUBSYSTEM=="block", KERNEL=="vd[b-z]", TAG+="systemd", '
        'ENV{SYSTEMD_WANTS}+="corral-volume@%k.service"\n'
    ),
}

# how the user-data script hooks the helper into each kind of guest's boot
INSTALL = r"""if [ -d /run/systemd/system ]; then
    udevadm control --reload 2>/dev/null
    systemctl daemon-reload
    systemctl enable corral-appliance.service corral-appliance-watch.service
    systemctl start --no-block corral-appliance.service corral-appliance-watch.service
else
    grep -q '/etc/corral/appliance boot' /etc/inittab \
        || echo '::once:/etc/corral/appliance boot' >> /etc/inittab
    /etc/corral/appliance boot
fi
"""
