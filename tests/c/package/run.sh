#!/usr/bin/env bash
# Installs libcluster into a temporary prefix with scripts/install.sh, then
# builds and runs small consumers: with `pkg-config --cflags --libs
# libcluster` (C and C++), and with CMake's find_package(libcluster CONFIG
# REQUIRED) + target_link_libraries(x libcluster::cluster) (shared and
# static). Run by ctest (test `package.install`).
#
# Usage: run.sh <repo root> <library dir> [cmake] [c compiler] [c++ compiler]
set -euo pipefail
root=${1:?repo root}
libdir=${2:?library dir}
cmake=${3:-cmake}
cc=${4:-cc}
cxx=${5:-c++}
here="$root/tests/c/package"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/libcluster-package.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"

step() { printf '\n--- %s\n' "$*"; }

step "install into $prefix"
"$root/scripts/install.sh" --prefix "$prefix" --lib-dir "$libdir"
for f in lib/libcluster.so lib/libcluster.a include/cluster.h include/cluster.hpp lib/pkgconfig/libcluster.pc \
         lib/cmake/libcluster/libclusterConfig.cmake lib/cmake/libcluster/libclusterConfigVersion.cmake; do
    [ -f "$prefix/$f" ] || { echo "missing $prefix/$f"; exit 1; }
done

step "pkg-config"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
version=$(pkg-config --modversion libcluster)
want=$(sed -n 's/^#define CLUSTER_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$root/include/cluster.h" | paste -sd.)
[ "$version" = "$want" ] || { echo "pkg-config version $version, header $want"; exit 1; }
flags=$(pkg-config --cflags --libs libcluster)
echo "pkg-config --cflags --libs libcluster: $flags"
# shellcheck disable=SC2086
"$cc" -Wall -Wextra -Werror "$here/consumer.c" $flags -o "$tmp/consumer_pc_c"
# shellcheck disable=SC2086
"$cxx" -std=c++17 -Wall -Wextra -Werror "$here/consumer.cpp" $flags -o "$tmp/consumer_pc_cpp"
# static: the archive plus Libs.private (pkg-config --static)
private=$(pkg-config --static --libs-only-l libcluster | sed 's/-lcluster\b//')
echo "static link: libcluster.a $private"
# shellcheck disable=SC2046,SC2086
"$cc" -Wall -Wextra -Werror "$here/consumer.c" $(pkg-config --cflags libcluster) "$prefix/lib/libcluster.a" \
    $private -o "$tmp/consumer_pc_static"
# Consumers record the SONAME, not the development link.
readelf -d "$tmp/consumer_pc_c" | grep -q 'NEEDED.*\[libcluster\.so\.0\]' || { echo "consumer does not need libcluster.so.0"; readelf -d "$tmp/consumer_pc_c"; exit 1; }
[ -L "$prefix/lib/libcluster.so.0" ] || { echo "no libcluster.so.0 link installed"; exit 1; }
LD_LIBRARY_PATH="$prefix/lib" "$tmp/consumer_pc_c"
LD_LIBRARY_PATH="$prefix/lib" "$tmp/consumer_pc_cpp"
env -u LD_LIBRARY_PATH "$tmp/consumer_pc_static"
if ldd "$tmp/consumer_pc_static" | grep -q libcluster; then
    echo "the static consumer links libcluster.so"; exit 1
fi

step "CMake find_package(libcluster CONFIG REQUIRED)"
"$cmake" -S "$here" -B "$tmp/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Release
"$cmake" --build "$tmp/build"
# CMake's build RPATH points at the installed library: no LD_LIBRARY_PATH.
env -u LD_LIBRARY_PATH "$tmp/build/consumer_cmake_c"
env -u LD_LIBRARY_PATH "$tmp/build/consumer_cmake_cpp"
env -u LD_LIBRARY_PATH "$tmp/build/consumer_cmake_static"

step "a version the package cannot satisfy is refused"
mkdir -p "$tmp/badver"
cat > "$tmp/badver/CMakeLists.txt" <<CMK
cmake_minimum_required(VERSION 3.16)
project(badver NONE)
find_package(libcluster $((${want%%.*} + 1)).0 CONFIG QUIET)
if(libcluster_FOUND)
  message(FATAL_ERROR "libcluster $want accepted for a request of the next major version")
endif()
CMK
"$cmake" -S "$tmp/badver" -B "$tmp/badver/build" -DCMAKE_PREFIX_PATH="$prefix" > /dev/null

step "package test passed"
