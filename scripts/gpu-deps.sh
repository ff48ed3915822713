#!/usr/bin/env bash
# Prepare what a bare GPU machine lacks, on a Debian machine that has apt-get:
# the runtime + -dev packages of libmicrohttpd, cJSON, Criterion, PCRE2 and
# sentencepiece, downloaded (not installed) and unpacked into .deps/root, and
# the default model cut to 4 layers (.deps/gpu/smollm2-4l.gguf; the full file
# is too large to travel). The GPU machine's build uses them with
# `make DEPS_ROOT=.deps/root` (scripts/gpu-check.sh does this).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(libmicrohttpd-dev libmicrohttpd12 libcjson-dev libcjson1 libcriterion-dev libcriterion3
      libnanomsg5 libgit2-1.5 libhttp-parser2.9 libmbedtls14 libmbedx509-1 libmbedcrypto7 libssh2-1
      libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
      libsentencepiece-dev libsentencepiece0 libprotobuf32 libprotobuf-lite32)
mkdir -p .deps/debs .deps/root
( cd .deps/debs && apt-get download "${PKGS[@]}" >/dev/null )
for d in .deps/debs/*.deb; do dpkg -x "$d" .deps/root; done
[ -f .deps/gpu/smollm2-4l.gguf ] || bash scripts/gpu-check.sh prep
du -sh .deps/root .deps/gpu
