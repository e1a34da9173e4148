set -e
# Run by `dfleet lab up` inside the lab image (`dfleet image exec`) when it
# builds the image cache's base level.

# Units that would hang up the serial port or slow the boot.
for u in serial-getty@ttyS0 e2scrub_reap getty-static getty@tty1 systemd-user-sessions; do
  ln -sf /dev/null /etc/systemd/system/$u.service
done
