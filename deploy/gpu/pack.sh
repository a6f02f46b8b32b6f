#!/usr/bin/env bash
# Packs what the GPU checks need into one folder that can travel to a GPU machine which has the
# CUDA driver, CMake and Ninja but none of this project's Debian packages: the CUDA test and bench
# binaries and `strata` (stripped), the shared libraries they load from Debian (absl, gRPC, UCX,
# ...), the tokenizer files (for `strata mkmodel`), the commit they were built from, and run.sh,
# which runs them there.
#
#   deploy/gpu/pack.sh [BUILD_DIR] [OUT_DIR]      # defaults: build, .gpu
#
# The C library, libstdc++, the CUDA driver and the toolkit's cuBLAS are the GPU machine's own;
# cudart is linked statically into the binaries.
set -euo pipefail
build=${1:-build}
out=${2:-.gpu}
binaries=(
  "$build/tests/unit/engine/backend_ops_test"
  "$build/tests/unit/engine/cuda_model_test"
  "$build/bench/cuda/cuda_bench"
  "$build/cli/strata"
)
for b in "${binaries[@]}"; do
  [[ -x $b ]] || { echo "pack.sh: $b is missing: build with nvcc present (STRATA_WITH_CUDA=ON) first" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for b in "${binaries[@]}"; do
  strip -o "$out/bin/$(basename "$b")" "$b"
done
# Every library the binaries load, but the ones the GPU machine has itself.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl\.|librt\.|libstdc\+\+|libgcc_s|libcuda\.|libcublas|libcudart)'
for b in "${binaries[@]}"; do
  ldd "$b" | awk '/=> \// {print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ ! $name =~ $skip ]]; then cp -L "$path" "$out/lib/$name"; fi
done
# UCX loads its transports as modules at run time: they travel too, where the build has them.
ucx_modules=$(ldd "$build/cli/strata" | awk '/libucp/ {print $3}' | xargs -r dirname)/ucx
if [[ -d $ucx_modules ]]; then mkdir -p "$out/lib/ucx"; cp -L "$ucx_modules"/*.so* "$out/lib/ucx/" 2>/dev/null || true; fi
tokdir=$(grep -Po '^STRATA_TOKENIZER_DIR:PATH=\K.*' "$build/CMakeCache.txt" || true)
mkdir -p "$out/tok"
cp "$tokdir/tokenizer.json" "$tokdir/tokenizer_config.json" "$out/tok/"
git -C "$(dirname "$0")" describe --always --dirty >"$out/commit" 2>/dev/null || echo unknown >"$out/commit"
cp "$(dirname "$0")/run.sh" "$out/run.sh"
du -sh "$out"
