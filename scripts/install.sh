#!/usr/bin/env bash
# Builds libcluster (cargo build --release) and installs it:
#
#   <prefix>/lib/libcluster.so.<version> (+ links libcluster.so.0, libcluster.so),
#   <prefix>/lib/libcluster.a
#   <prefix>/include/cluster.h, <prefix>/include/cluster.hpp
#   <prefix>/lib/pkgconfig/libcluster.pc
#   <prefix>/lib/cmake/libcluster/libclusterConfig.cmake (+ ConfigVersion)
#
# Usage: scripts/install.sh [--prefix DIR] [--destdir DIR] [--lib-dir DIR] [--no-build]
#   --prefix DIR   installation prefix (default /usr/local); the installed
#                  pkg-config and CMake files are relocatable
#   --destdir DIR  stage under DIR/<prefix> (for packaging)
#   --lib-dir DIR  install the libraries found in DIR instead of building
#                  (e.g. target/debug); implies --no-build
#   --no-build     use target/release as it is
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
destdir=
libdir_src=
build=1

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) prefix=${1#*=}; shift ;;
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) destdir=${1#*=}; shift ;;
        --lib-dir) libdir_src=${2:?--lib-dir needs a directory}; build=0; shift 2 ;;
        --lib-dir=*) libdir_src=${1#*=}; build=0; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case "$prefix" in /*) ;; *) prefix="$(pwd)/$prefix" ;; esac
if [ -n "$libdir_src" ]; then
    case "$libdir_src" in /*) ;; *) libdir_src="$(pwd)/$libdir_src" ;; esac
else
    libdir_src="$root/target/release"
fi

if [ "$build" -eq 1 ]; then
    echo "install.sh: cargo build --release"
    (cd "$root" && cargo build --release --lib)
fi

for f in "$libdir_src/libcluster.so" "$libdir_src/libcluster.a" "$root/include/cluster.h" "$root/bindings/cpp/cluster.hpp"; do
    [ -f "$f" ] || { echo "install.sh: missing $f (build first: cargo build --release)" >&2; exit 1; }
done

# The version, from the header (the contract): major.minor.patch.
ver_part() { sed -n "s/^#define CLUSTER_VERSION_$1 \([0-9][0-9]*\).*/\1/p" "$root/include/cluster.h"; }
major=$(ver_part MAJOR); minor=$(ver_part MINOR); patch=$(ver_part PATCH)
[ -n "$major" ] && [ -n "$minor" ] && [ -n "$patch" ] || { echo "install.sh: no version in cluster.h" >&2; exit 1; }
version="$major.$minor.$patch"

# What a static link needs besides the archive (rustc --print native-static-libs
# for this crate on Linux); and the shared library's SONAME, if it has one.
static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"
static_libs_cmake="gcc_s;util;rt;m;dl"
soname=
if command -v readelf >/dev/null 2>&1; then
    soname=$(readelf -d "$libdir_src/libcluster.so" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p' | head -n1)
fi

dest="${destdir}${prefix}"
install -d "$dest/lib/pkgconfig" "$dest/lib/cmake/libcluster" "$dest/include"
if [ -n "$soname" ] && [ "$soname" != "libcluster.so" ]; then
    # libcluster.so.<version>, its SONAME link and the development link.
    install -m 0755 "$libdir_src/libcluster.so" "$dest/lib/libcluster.so.$version"
    ln -sf "libcluster.so.$version" "$dest/lib/$soname"
    ln -sf "$soname" "$dest/lib/libcluster.so"
else
    install -m 0755 "$libdir_src/libcluster.so" "$dest/lib/libcluster.so"
fi
install -m 0644 "$libdir_src/libcluster.a" "$dest/lib/libcluster.a"
install -m 0644 "$root/include/cluster.h" "$dest/include/cluster.h"
install -m 0644 "$root/bindings/cpp/cluster.hpp" "$dest/include/cluster.hpp"

subst() {
    sed -e "s|@VERSION@|$version|g" -e "s|@VERSION_MAJOR@|$major|g" \
        -e "s|@STATIC_LIBS@|$static_libs|g" -e "s|@STATIC_LIBS_CMAKE@|$static_libs_cmake|g" \
        -e "s|@SONAME@|$soname|g" "$1" > "$2"
    chmod 0644 "$2"
}
subst "$root/bindings/pkgconfig/libcluster.pc.in" "$dest/lib/pkgconfig/libcluster.pc"
subst "$root/bindings/cmake/libclusterConfig.cmake.in" "$dest/lib/cmake/libcluster/libclusterConfig.cmake"
subst "$root/bindings/cmake/libclusterConfigVersion.cmake.in" "$dest/lib/cmake/libcluster/libclusterConfigVersion.cmake"

echo "install.sh: installed libcluster $version into $dest"
echo "  pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs libcluster"
echo "  CMake:      -DCMAKE_PREFIX_PATH=$prefix, find_package(libcluster CONFIG REQUIRED)"
case "$prefix" in
    /usr|/usr/local) ;;
    *) echo "  run time:   LD_LIBRARY_PATH=$prefix/lib (or link with -Wl,-rpath,$prefix/lib)" ;;
esac
