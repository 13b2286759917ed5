#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm machine (rustup with only stable 1.95 and
# RUSTUP_AUTO_INSTALL=0). A second run only checks and takes seconds.
#   scripts/setup.sh run    toolchains + bpf-linker (to build and run the daemon)
#   scripts/setup.sh test   the same + the programs the tests drive (openssl, curl, nginx, ...)
#                           and cargo-fuzz (the test run fuzzes every target briefly)
#   scripts/setup.sh deb    the same as run + cargo-deb
#   scripts/setup.sh fuzz   the same as run + cargo-fuzz
set -euo pipefail
cd "$(dirname "$0")/.."

STABLE=1.99.1
NIGHTLY=nightly-2026-10-30
BPF_LINKER=0.13.0
LLVM_SONAME=libLLVM.so.23.1-rust-1.101.0-nightly
PURPOSE=${1:-test}

say() { echo "setup: $*" >&2; }
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$PURPOSE" = test ]; then
  need=()
  for pair in openssl:openssl tcpdump:tcpdump tshark:tshark nginx:nginx-light curl:curl ip:iproute2 \
              python3:python3 mosquitto:mosquitto mosquitto_sub:mosquitto-clients systemd-analyze:systemd fail2ban-regex:fail2ban \
              gzip:gzip unshare:util-linux wrk:wrk go:golang-go java:openjdk-17-jre-headless \
              nft:nftables haproxy:haproxy faketime:faketime promtool:prometheus \
              mariadbd:mariadb-server mariadb:mariadb-client dovecot:dovecot-imapd slapd:slapd \
              ldapwhoami:ldap-utils chromium:chromium chromedriver:chromium-driver; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
  done
  python3 -c 'import jsonschema' >/dev/null 2>&1 || need+=(python3-jsonschema)
  # The fleet tests start their own PostgreSQL server from Debian's server programs.
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The Debian packages start their services; the tests run their own instances.
    systemctl disable --now nginx mosquitto fail2ban postgresql haproxy prometheus prometheus-node-exporter \
      mariadb dovecot slapd >/dev/null 2>&1 || true
    for s in postgresql mariadb dovecot slapd; do service "$s" stop >/dev/null 2>&1 || true; done
  fi
fi

# The user the daemon becomes once its probes are attached (the package creates it too).
if { [ "$PURPOSE" = test ] || [ "$PURPOSE" = run ]; } && ! getent passwd tlsmon >/dev/null; then
  say "creating the system user tlsmon (tlsmon run drops to it after attaching)"
  if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$PWD/packaging/tlsmon.sysusers"
  else
    useradd --system --user-group --home-dir /var/lib/tlsmon --no-create-home \
      --shell /usr/sbin/nologin tlsmon
  fi
  getent passwd tlsmon >/dev/null || { say "could not create the user tlsmon"; exit 1; }
fi

installed() { rustup toolchain list | grep -q "^$1"; }
installed "$STABLE" || { say "installing Rust $STABLE"; rustup toolchain install "$STABLE" --profile minimal --component clippy,rustfmt; }
installed "$NIGHTLY" || { say "installing $NIGHTLY"; rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src; }

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER"; then
  # bpf-linker 0.13 needs LLVM 23, which Debian bookworm does not package; the nightly ships
  # its own libLLVM. LLVM_PREFIX points at a folder whose lib/ links that file twice: as
  # libLLVM.so (for the link) and under its exact soname (for the loader). The prefix must
  # outlive the build: it is the binary's rpath.
  sysroot=$(rustc +"$NIGHTLY" --print sysroot)
  prefix="$HOME/.cache/tlsmon/llvm"
  mkdir -p "$prefix/lib"
  ln -sf "$sysroot/lib/$LLVM_SONAME" "$prefix/lib/libLLVM.so"
  ln -sf "$sysroot/lib/$LLVM_SONAME" "$prefix/lib/$LLVM_SONAME"
  say "building bpf-linker $BPF_LINKER (about 80 s)"
  LLVM_PREFIX="$prefix" cargo +"$NIGHTLY" install bpf-linker --version "$BPF_LINKER" --locked --quiet
fi
if { [ "$PURPOSE" = test ] || [ "$PURPOSE" = deb ]; } && ! cargo deb --version >/dev/null 2>&1; then
  say "building cargo-deb (about 45 s)"
  cargo +"$STABLE" install cargo-deb --version 3.8.0 --locked --quiet
fi
if { [ "$PURPOSE" = test ] || [ "$PURPOSE" = fuzz ]; } && ! cargo fuzz --version >/dev/null 2>&1; then
  say "building cargo-fuzz (about 60 s)"
  cargo +"$STABLE" install cargo-fuzz --version 0.13.2 --locked --quiet
fi
say "ready ($PURPOSE)"
