#!/usr/bin/env bash
# Install the Debian packages edgetvm needs on the host: cross compilers for the boards, and debootstrap +
# qemu-user-static for the emulated board. Installs only what is missing; needs root (or sudo).
# The cross C libraries (crti.o, libc.so for the linker) are only Recommends of the cross compilers, which
# --no-install-recommends skips: without them every board build fails to link.
set -euo pipefail

packages=(gcc g++ gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
          openssh-client
          debootstrap qemu-user-static binfmt-support)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "edgetvm: missing Debian packages: ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
    exit 2
  fi
  echo "edgetvm: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
