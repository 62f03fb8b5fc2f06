# shellcheck shell=bash
# Shared by the tests/pkg/*.sh scripts (sourced, never run): argument handling, a private
# temporary directory removed on exit, failure reporting, and an install of the build into a
# DESTDIR there. Nothing here writes outside that directory.
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 SOURCE_DIR BUILD_DIR" >&2
	exit 2
fi
# shellcheck disable=SC2034 # used by the scripts that source this
SRC=$(cd "$1" && pwd)
BUILD=$(cd "$2" && pwd)
T=$(mktemp -d "/tmp/ctxhookd-$(basename "$0" .sh)-XXXXXX")
trap 'rm -rf "$T"' EXIT

FAILURES=0
fail() {
	echo "FAIL: $*" >&2
	FAILURES=$((FAILURES + 1))
}
pass() {
	echo "ok: $*"
}
# Ends the test: non-zero when anything failed.
finish() {
	if [ "$FAILURES" -gt 0 ]; then
		echo "$FAILURES check(s) failed" >&2
		exit 1
	fi
	echo "all checks passed"
}

# The project version as configured in the build directory.
project_version() {
	sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$BUILD/CMakeCache.txt"
}

# The installed name of ctxhookd(8): gzipped when the build found gzip (CMake's false values
# mean it did not, or was told not to with -DCTXHOOKD_GZIP=OFF).
man_page_name() {
	local gzip
	gzip=$(sed -n 's/^CTXHOOKD_GZIP:[A-Z]*=//p' "$BUILD/CMakeCache.txt")
	case ${gzip^^} in
	"" | OFF | FALSE | NO | N | 0 | IGNORE | *NOTFOUND) echo ctxhookd.8 ;;
	*) echo ctxhookd.8.gz ;;
	esac
}

# man_page_text FILE: the roff source of an installed page, gzipped or not.
man_page_text() {
	case $1 in
	*.gz) gzip -dc "$1" ;;
	*) cat "$1" ;;
	esac
}

# install_root DIR [PREFIX]: `cmake --install` of the build into DESTDIR=DIR.
install_root() {
	local root=$1 prefix=${2:-/usr}
	if ! DESTDIR="$root" cmake --install "$BUILD" --prefix "$prefix" >"$T/install.log" 2>&1; then
		cat "$T/install.log" >&2
		echo "FAIL: cmake --install $BUILD --prefix $prefix (DESTDIR=$root)" >&2
		exit 1
	fi
}

# unit_value FILE KEY: the value of the last KEY= line of a unit file.
unit_value() {
	sed -n "s/^$2=//p" "$1" | tail -n 1
}
