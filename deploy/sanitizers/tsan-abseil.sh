#!/usr/bin/env bash
# Builds Debian's own Abseil (the source package of the installed libabsl-dev, Debian's patches
# applied) as shared libraries instrumented with ThreadSanitizer, and caches them outside git.
# `make test-tsan` runs the suite with these loaded instead of /usr/lib's: an uninstrumented
# absl::Mutex / CondVar / Notification is invisible to TSan, so everything they guard looks racy.
# Same source, patches (inline namespace absl::debian3, absl/base/options.h), C++ standard
# (debian/rules: 17) and sonames as the installed libraries, so they are ABI-compatible; the script
# checks that every symbol the installed libraries export is exported by the instrumented ones.
# Prints the folder holding the libraries on its last line. A second run finds the stamp of a
# finished build of the same version and does not touch the network or the compiler.
# Needs: Debian's mirror (deb-src; STRATA_DEBIAN_MIRROR overrides http://deb.debian.org),
# dpkg-dev (installed if missing), cmake, ninja, g++.
set -euo pipefail
jobs=${JOBS:-2}
version=$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null) ||
  { echo "tsan-abseil: libabsl-dev is not installed (run deploy/install-deps.sh)" >&2; exit 1; }
cache="${STRATA_CACHE:-$HOME/.cache/strata}/tsan-abseil"
dest="$cache/$version"
flags="-O2 -g -fno-omit-frame-pointer -fsanitize=thread"
stamp="abseil $version, -DCMAKE_CXX_STANDARD=17 -DBUILD_SHARED_LIBS=ON, $flags"

if [[ -f "$dest/stamp" && "$(cat "$dest/stamp")" == "$stamp" ]]; then
  echo "$dest/lib"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
if ! command -v dpkg-source >/dev/null; then
  echo "tsan-abseil: installing dpkg-dev (dpkg-source applies Debian's patches)" >&2
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends dpkg-dev >&2
fi

work="$cache/work"
rm -rf "$work" "$dest"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
cd "$work"
# A private apt state with only Debian's deb-src lines (the release, its point and security
# updates: the installed version may come from any), checked against Debian's archive keys; no
# root needed, nothing of the system's changed.
mirror=${STRATA_DEBIAN_MIRROR:-http://deb.debian.org}
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:?}")
keys="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
{
  echo "deb-src $keys $mirror/debian $codename main"
  echo "deb-src $keys $mirror/debian $codename-updates main"
  echo "deb-src $keys $mirror/debian-security $codename-security main"
} >apt/sources.list
apt_opts=(-o Dir::Etc::SourceList="$work/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
  -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache"
  -o APT::Sandbox::User="$(id -un)" -q)
echo "tsan-abseil: fetching the source of abseil $version from $mirror" >&2
apt-get "${apt_opts[@]}" update >&2
# apt checks the files against the signed Release; the .dsc's own signature needs Debian's
# developers' keyring, which is not installed, so dpkg-source only warns about that.
apt-get "${apt_opts[@]}" source --download-only "abseil=$version" >&2
dpkg-source -x ./abseil_*.dsc src >&2

# Debian configures with debhelper (CMAKE_BUILD_TYPE=None: no NDEBUG) and -O2 -g; we add TSan.
echo "tsan-abseil: building with $flags into $dest" >&2
cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_STANDARD=17 \
  -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread -DCMAKE_INSTALL_PREFIX="$dest" \
  -DCMAKE_INSTALL_LIBDIR=lib >&2
cmake --build build -j "$jobs" >&2
cmake --install build >&2

# ABI check: each installed libabsl_*.so.N has its instrumented twin exporting every global
# function and object it exports (weak symbols are inline code every user has its own copy of).
exports() { nm -D --defined-only "$1" | awk '$2 ~ /^[TDBR]$/ {print $3}' | sort -u; }
n=0
for sys in /usr/lib/"$(dpkg-architecture -qDEB_HOST_MULTIARCH)"/libabsl_*.so.*; do
  [[ "$sys" =~ \.so\.[0-9]+$ ]] || continue  # the soname, not the file it links to
  name=$(basename "$sys")
  ours="$dest/lib/$name"
  if [[ ! -e "$ours" ]]; then
    echo "tsan-abseil: $name is installed but was not built" >&2; exit 1
  fi
  missing=$(comm -23 <(exports "$sys") <(exports "$ours") | head -n 5)
  if [[ -n "$missing" ]]; then
    echo "tsan-abseil: $ours lacks symbols of $sys, e.g.: $missing" >&2; exit 1
  fi
  n=$((n + 1))
done
[[ $n -gt 0 ]] || { echo "tsan-abseil: no installed libabsl_*.so found to compare with" >&2; exit 1; }
echo "tsan-abseil: $n libraries, ABI-compatible with the installed ones" >&2
cd "$cache"
rm -rf "$work"
echo "$stamp" >"$dest/stamp"
echo "$dest/lib"
