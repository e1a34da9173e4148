set -e
# Run by `dfleet lab up` inside the lab image (`dfleet image exec`) before it
# installs the agent and publishes: the lab's own tools, cheap to change.

# Markers on the serial console at multi-user, read by `dfleet lab status`
# and the end-to-end tests.
cat > /usr/local/sbin/dfleet-lab-marker <<'EOS'
#!/bin/sh
# Written by dfleet lab: boot markers on the serial console.
# Gathered first and printed at once, READY last: a console with READY has
# every marker of that boot.
root=$(findmnt -no SOURCE,FSTYPE,OPTIONS /)
lower=$(findmnt -no SOURCE,FSTYPE,OPTIONS /run/dfleet/lower)
by=$(cat /run/dfleet/mounted-by 2>/dev/null || echo unknown)
upper=$(($(stat -f -c '%S * %b' /run/dfleet/rw)))
cmdline=$(cat /proc/cmdline)
uptime=$(cut -d' ' -f1 /proc/uptime)
printf '%s\n' "DFLEET-ROOT $root" "DFLEET-LOWER $lower" "DFLEET-MOUNTED-BY $by" \
  "DFLEET-UPPER-SIZE $upper" "DFLEET-CMDLINE $cmdline" "DFLEET-READY uptime=$uptime" \
  > /dev/ttyS0 2>&1
EOS
chmod 755 /usr/local/sbin/dfleet-lab-marker
cat > /etc/systemd/system/dfleet-lab-marker.service <<'EOS'
[Unit]
Description=dfleet lab: boot markers on the serial console
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/dfleet-lab-marker

[Install]
WantedBy=multi-user.target
EOS
