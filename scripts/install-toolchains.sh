#!/usr/bin/env bash
# Install the cross compilers, QEMU, clang, CMake and Chromium (for the
# report screenshot test) that the tests use, with apt, when any of them is
# missing. Without root or apt-get it only lists what is missing: the tests
# that need those tools then skip (outside CI) with the install command in
# the reason.
set -euo pipefail

packages=(gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
          gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc
          gcc-xtensa-lx106 picolibc-xtensa-lx106-elf clang cmake chromium)
tools=(arm-none-eabi-gcc qemu-system-arm riscv64-unknown-elf-gcc qemu-system-riscv32
       xtensa-lx106-elf-gcc clang cmake chromium)

missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# picolibc and newlib are libraries: look for their spec files.
[ -e /usr/lib/picolibc/riscv64-unknown-elf/picolibc.specs ] || missing+=(picolibc)
[ -e /usr/lib/arm-none-eabi/newlib/nano.specs ] || missing+=(newlib)
[ -e /usr/lib/xtensa-lx106-elf/picolibc.specs ] || missing+=(picolibc-xtensa)

if [ ${#missing[@]} -eq 0 ]; then
    echo "toolchains: all present"
    exit 0
fi
echo "toolchains: missing ${missing[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "toolchains: not root or no apt-get; install them with: sudo apt-get install ${packages[*]}"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "toolchains: installed ${packages[*]}"
