#!/bin/bash
# pkg_deb: `cpack -G DEB` on the build directory makes ctxhookd_<version>-1_<arch>.deb whose
# control data (package, version, section, Depends on every runtime library, conffiles) and
# file list are right, whose files are the ones the install puts in /usr and /etc, and whose
# maintainer scripts never enable or start the service: they are run here with a recording
# stand-in for systemctl first in PATH, so the real system is never touched.
# Usage: pkg_deb.sh SOURCE_DIR BUILD_DIR (registered with ctest as pkg_deb).
# shellcheck source=tests/pkg/lib.sh
source "$(dirname "$0")/lib.sh"

version=$(project_version)
arch=$(dpkg --print-architecture)
if ! cpack -G DEB --config "$BUILD/CPackConfig.cmake" -B "$T/out" >"$T/cpack.log" 2>&1; then
	cat "$T/cpack.log" >&2
	echo "FAIL: cpack -G DEB" >&2
	exit 1
fi
deb=$T/out/ctxhookd_${version}-1_${arch}.deb
if [ -f "$deb" ]; then
	pass "cpack made $(basename "$deb") ($(stat -c %s "$deb") bytes)"
else
	fail "no $(basename "$deb"); cpack made: $(ls "$T/out")"
	finish
fi

# Control fields.
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = ctxhookd ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version-1" ] || fail "Version: $(field Version), expected $version-1"
[ "$(field Section)" = net ] || fail "Section: $(field Section)"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
[ -n "$(field Maintainer)" ] || fail "no Maintainer"
description=$(field Description)
[[ $description == "conversation context store and event hooks daemon"$'\n'* ]] ||
	fail "Description: $description"
depends=$(field Depends)
for lib in libc6 libmicrohttpd12 libjansson4 libsqlite3-0 libinih1 libssl3 libsystemd0 \
	libcurl4 librdkafka1 procps; do
	echo ", $depends," | grep -Eq ", $lib( \([^)]*\))?," || fail "Depends lacks $lib: $depends"
done
pass "Depends: $depends"
dpkg-deb -I "$deb" >"$T/info.txt"
for f in conffiles postinst prerm postrm; do
	grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +(\* +)?$f( |$)" "$T/info.txt" ||
		fail "dpkg-deb -I shows no control file $f"
done

# Control files: conffiles names the config; the scripts are executable and valid sh.
dpkg-deb -e "$deb" "$T/control"
if [ "$(cat "$T/control/conffiles")" = /etc/ctxhookd/ctxhookd.conf ]; then
	pass "conffiles: /etc/ctxhookd/ctxhookd.conf"
else
	fail "conffiles: $(cat "$T/control/conffiles")"
fi
for s in postinst prerm postrm; do
	[ -x "$T/control/$s" ] || fail "$s is not executable"
	sh -n "$T/control/$s" || fail "$s is not valid sh"
done

# The file list: exactly these, under /usr with the config in /etc.
dpkg-deb -c "$deb" >"$T/contents.txt"
files=$(awk '$1 !~ /^d/ { print $6 }' "$T/contents.txt" | LC_ALL=C sort)
expected="./etc/ctxhookd/ctxhookd.conf
./usr/lib/systemd/system/ctxhookd.service
./usr/sbin/ctxhookd
./usr/share/doc/ctxhookd/README.md
./usr/share/doc/ctxhookd/examples/ctxhookd.conf
./usr/share/man/man8/$(man_page_name)"
if [ "$files" = "$expected" ]; then
	pass "dpkg-deb -c: $(echo "$files" | wc -l) files"
else
	fail "dpkg-deb -c differs:"$'\n'"$(diff <(echo "$expected") <(echo "$files") || true)"
fi
grep -q '^-rwxr-xr-x root/root .* \./usr/sbin/ctxhookd$' "$T/contents.txt" ||
	fail "usr/sbin/ctxhookd is not root-owned 0755 in the package"

# The payload: the program runs, the unit and config are the shipped ones.
dpkg-deb -x "$deb" "$T/root"
[ "$("$T/root/usr/sbin/ctxhookd" --version)" = "ctxhookd $version" ] ||
	fail "the packaged program does not print 'ctxhookd $version'"
cmp -s "$T/root/usr/lib/systemd/system/ctxhookd.service" "$SRC/systemd/ctxhookd.service" ||
	fail "the packaged unit differs from systemd/ctxhookd.service"
cmp -s "$T/root/etc/ctxhookd/ctxhookd.conf" "$SRC/config/ctxhookd.conf" ||
	fail "the packaged config differs from config/ctxhookd.conf"
man_page_text "$T/root/usr/share/man/man8/$(man_page_name)" >"$T/ctxhookd.8"
if ! groff -man -Tutf8 -ww -z "$T/ctxhookd.8" 2>"$T/groff.err" || [ -s "$T/groff.err" ]; then
	fail "the packaged man page: $(cat "$T/groff.err")"
fi

# Maintainer scripts with a recording systemctl. Whether they call it at all depends on
# /run/systemd/system (a booted systemd), which the scripts test and so does this.
mkdir "$T/bin"
cat >"$T/bin/systemctl" <<STUB
#!/bin/sh
echo "\$*" >>"$T/systemctl.calls"
STUB
chmod +x "$T/bin/systemctl"
booted=no
[ -d /run/systemd/system ] && booted=yes
# run_script SCRIPT ARGS... EXPECTED: the systemctl calls, one per line ('' for none).
run_script() {
	local expected=${*: -1} calls
	: >"$T/systemctl.calls"
	if ! PATH="$T/bin:$PATH" sh "$T/control/$1" "${@:2:$#-2}"; then
		fail "$* exited non-zero"
		return
	fi
	calls=$(cat "$T/systemctl.calls")
	if [ "$calls" = "$expected" ]; then
		pass "${*:1:$#-1}: systemctl ${calls:-(not called)}"
	else
		fail "${*:1:$#-1}: systemctl calls '$calls', expected '$expected'"
	fi
	if grep -Eq '(^| )(enable|start|restart|reenable)( |$)' "$T/systemctl.calls"; then
		fail "${*:1:$#-1} enables or starts the service"
	fi
}
if [ "$booted" = yes ]; then
	run_script postinst configure "daemon-reload"
	run_script postinst configure 0.0.1-1 "daemon-reload
try-restart ctxhookd.service"
	run_script prerm remove "stop ctxhookd.service"
	run_script postrm remove "daemon-reload"
	run_script postrm purge "disable ctxhookd.service
daemon-reload"
else
	run_script postinst configure ""
	run_script postinst configure 0.0.1-1 ""
	run_script prerm remove ""
	run_script postrm remove ""
	run_script postrm purge "disable ctxhookd.service"
fi
run_script prerm upgrade "$version-1" ""

finish
