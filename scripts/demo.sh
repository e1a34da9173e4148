#!/usr/bin/env bash
# Builds dfleet and runs the local demo fleet (run as root: the agents enroll
# from privileged ports, as on a real node). Extra arguments go to `dfleet demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ssh-keygen >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client
}
cargo build --release --locked --bins
exec target/release/dfleet demo "$@"
