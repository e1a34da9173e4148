set -e
# Run by `dfleet lab up` inside the lab image (`dfleet image exec`) when it
# builds the image cache's base level.

# Units that would hang up the serial port or slow the boot.
for u in serial-getty@ttyS0 e2scrub_reap getty-static getty@tty1 systemd-user-sessions; do
  ln -sf /dev/null /etc/systemd/system/$u.service
done

# sshd, for the SSH host key scenarios. Its package makes host keys when it
# is installed; they would be the same on every node, so publish refuses them
# and dfleet gives each node its own at boot.
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server
rm -f /etc/ssh/ssh_host_*
apt-get clean
rm -rf /var/lib/apt/lists/*
