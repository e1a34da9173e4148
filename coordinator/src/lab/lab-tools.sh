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

# The lab's control line: the second serial port, which only root on the
# host reaches (a socket in the lab directory). `dfleet lab fill` writes a
# file into a node's overlay through it. Fixed verbs, no shell.
cat > /usr/local/sbin/dfleet-lab-control <<'EOS'
#!/bin/sh
# Written by dfleet lab: answers `dfleet lab` on ttyS1, one line per request.
set -u
stty -F /dev/ttyS1 115200 raw -echo
exec 3<>/dev/ttyS1
while read -r verb arg <&3; do
  case "$verb" in
    ping)
      echo "DFLEET-CTL pong" >&3 ;;
    fill)
      case "$arg" in
        '' | *[!0-9]*) echo "DFLEET-CTL error: fill needs a byte count, not '$arg'" >&3 ;;
        *)
          f=/var/tmp/dfleet-lab-fill
          if head -c "$arg" /dev/urandom > "$f.new" && mv "$f.new" "$f" && sync; then
            echo "DFLEET-CTL filled $f $(stat -c %s "$f")" >&3
          else
            echo "DFLEET-CTL error: writing $arg bytes to $f failed" >&3
          fi ;;
      esac ;;
    *)
      echo "DFLEET-CTL error: unknown request '$verb' (ping, fill BYTES)" >&3 ;;
  esac
done
EOS
chmod 755 /usr/local/sbin/dfleet-lab-control
cat > /etc/systemd/system/dfleet-lab-control.service <<'EOS'
[Unit]
Description=dfleet lab: control line on the second serial port
Before=dfleet-agent.service

[Service]
Type=exec
ExecStart=/usr/local/sbin/dfleet-lab-control
Restart=on-failure

[Install]
WantedBy=multi-user.target
EOS
