#!/bin/sh
# Builds the micro guest (guest/micro.asm) into dist/guest/micro.elf.
# Needs nasm (Debian: apt-get install -y nasm). No linker: the ELF header is in
# the source.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/dist/guest"
mkdir -p "$out"
nasm -f bin -o "$out/micro.elf" "$root/guest/micro.asm"
