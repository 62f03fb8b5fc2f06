#!/bin/bash
# pkg_install: `cmake --install BUILD --prefix /usr` into a DESTDIR puts exactly the expected
# files where the unit and the man page say they are: the program runs, the unit starts it with
# the installed config, the man page renders without a groff warning and documents every option
# the program knows (and no other). Also: a locally changed config survives a second install,
# and another prefix gets a unit that points into that prefix.
# Usage: pkg_install.sh SOURCE_DIR BUILD_DIR (registered with ctest as pkg_install).
# shellcheck source=tests/pkg/lib.sh
source "$(dirname "$0")/lib.sh"

version=$(project_version)
root=$T/root
install_root "$root" /usr
man_name=$(man_page_name)

# Exactly these files, nothing else.
expected="etc/ctxhookd/ctxhookd.conf
usr/lib/systemd/system/ctxhookd.service
usr/sbin/ctxhookd
usr/share/doc/ctxhookd/README.md
usr/share/doc/ctxhookd/examples/ctxhookd.conf
usr/share/man/man8/$man_name"
got=$(cd "$root" && find . \( -type f -o -type l \) | sed 's|^\./||' | LC_ALL=C sort)
if [ "$got" = "$expected" ]; then
	pass "installed files: $(echo "$got" | wc -l)"
else
	fail "installed files differ:"$'\n'"$(diff <(echo "$expected") <(echo "$got") || true)"
fi

# The program.
bin=$root/usr/sbin/ctxhookd
if [ -x "$bin" ] && [ "$("$bin" --version)" = "ctxhookd $version" ]; then
	pass "usr/sbin/ctxhookd --version: ctxhookd $version"
else
	fail "usr/sbin/ctxhookd --version does not print 'ctxhookd $version'"
fi

# Modes: a world-readable config (the service's dynamic user reads it), an executable program.
for f in usr/sbin/ctxhookd:755 etc/ctxhookd/ctxhookd.conf:644 \
	usr/lib/systemd/system/ctxhookd.service:644 usr/share/man/man8/$man_name:644; do
	mode=$(stat -c %a "$root/${f%%:*}" 2>/dev/null || echo missing)
	[ "$mode" = "${f##*:}" ] || fail "${f%%:*}: mode $mode, expected ${f##*:}"
done

# Contents: the shipped config (also as the documentation's example), the README, and with
# prefix /usr the unit exactly as in the source tree.
cmp -s "$root/etc/ctxhookd/ctxhookd.conf" "$SRC/config/ctxhookd.conf" ||
	fail "etc/ctxhookd/ctxhookd.conf is not config/ctxhookd.conf"
cmp -s "$root/usr/share/doc/ctxhookd/examples/ctxhookd.conf" "$SRC/config/ctxhookd.conf" ||
	fail "the example config is not config/ctxhookd.conf"
cmp -s "$root/usr/share/doc/ctxhookd/README.md" "$SRC/README.md" || fail "README.md differs"
unit=$root/usr/lib/systemd/system/ctxhookd.service
cmp -s "$unit" "$SRC/systemd/ctxhookd.service" ||
	fail "with prefix /usr the installed unit differs from systemd/ctxhookd.service"

# The unit's ExecStart= runs the installed program on the installed config.
read -r -a exec_start <<<"$(unit_value "$unit" ExecStart)"
if [ "${exec_start[0]:-}" = /usr/sbin/ctxhookd ] && [ -x "$root${exec_start[0]}" ] &&
	[ "${exec_start[1]:-}" = run ] && [ "${exec_start[2]:-}" = -c ] &&
	[ -f "$root${exec_start[3]:-/nonexistent}" ]; then
	pass "ExecStart=${exec_start[*]}: program and config are installed there"
else
	fail "ExecStart=${exec_start[*]} does not name the installed program and config"
fi
# The installed config is valid as it is (with the embedded Kafka broker it needs no peers).
if (cd "$T" && "$bin" check-config -c "$root/etc/ctxhookd/ctxhookd.conf" >/dev/null 2>"$T/cc.err"); then
	pass "check-config accepts the installed config"
else
	fail "check-config rejects the installed config: $(cat "$T/cc.err")"
fi

# The man page: valid gzip, the project's version, no warning from groff -ww nor from man.
page=$root/usr/share/man/man8/$man_name
case $man_name in *.gz) gzip -t "$page" || fail "$man_name is not valid gzip" ;; esac
man_page_text "$page" >"$T/ctxhookd.8"
grep -q "^\.TH CTXHOOKD 8 .*\"ctxhookd $version\"" "$T/ctxhookd.8" ||
	fail "the man page's .TH line does not carry version $version"
if groff -man -Tutf8 -ww -z "$T/ctxhookd.8" 2>"$T/groff.err" && [ ! -s "$T/groff.err" ]; then
	pass "groff -man -Tutf8 -ww: no warnings"
else
	fail "groff -man -Tutf8 -ww warns: $(cat "$T/groff.err")"
fi
if command -v man >/dev/null 2>&1; then
	if LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" >"$T/man.txt" 2>"$T/man.err" &&
		[ ! -s "$T/man.err" ] && grep -q "EXIT STATUS" "$T/man.txt"; then
		pass "man -l renders the installed page without warnings"
	else
		fail "man -l $man_name: $(cat "$T/man.err")"
	fi
fi
groff -man -Tutf8 -rLL=1000n -P-cbou "$T/ctxhookd.8" 2>/dev/null >"$T/rendered.txt"
for s in NAME SYNOPSIS DESCRIPTION COMMANDS OPTIONS CONFIGURATION SIGNALS FILES ENVIRONMENT \
	"EXIT STATUS" SYSTEMD "SEE ALSO"; do
	grep -qx "$s" "$T/rendered.txt" || fail "the man page has no section $s"
done
# What the page's FILES and SYSTEMD sections say is where it is.
for p in /usr/sbin/ctxhookd /etc/ctxhookd/ctxhookd.conf /usr/share/doc/ctxhookd/ \
	/usr/lib/systemd/system/ctxhookd.service; do
	grep -qF "$p" "$T/rendered.txt" || fail "the man page does not mention $p"
	[ -e "$root$p" ] || fail "the man page names $p, which is not installed"
done
grep -qF "ctxhookd ${exec_start[*]:1}" "$T/rendered.txt" ||
	fail "the man page does not show the unit's command line (ctxhookd ${exec_start[*]:1})"

# Every [section] key the program knows (check-config prints them all; a hook shows the hook
# keys) is documented under CONFIGURATION, and nothing else is.
cat >"$T/hook.conf" <<'CONF'
[hook "h"]
on = conversation.end
url = http://127.0.0.1:9/x
secret = whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=
CONF
(cd "$T" && env -u CTXHOOKD_CONFIG "$bin" check-config -c "$T/hook.conf" 2>/dev/null) |
	awk '/^\[/ { s = $0; sub(/^\[/, "", s); sub(/[] "].*$/, "", s); next }
	     /^[a-z_]+ =( |$)/ && s != "" { print s, $1 }' | LC_ALL=C sort >"$T/keys.program"
awk '/^\.SH / { in_conf = ($0 ~ /^\.SH CONFIGURATION/); next }
     !in_conf { next }
     /^\.SS / { s = $0; sub(/^\.SS "?\[/, "", s); sub(/[] \\"].*$/, "", s); next }
     /^\.TP/ { tag = 1; next }
     tag && /^\.BR? / && s != "" { print s, $2 }
     { tag = 0 }' "$T/ctxhookd.8" | LC_ALL=C sort >"$T/keys.man"
n=$(wc -l <"$T/keys.program")
if [ "$n" -lt 30 ]; then
	fail "check-config listed only $n options"
elif cmp -s "$T/keys.program" "$T/keys.man"; then
	pass "the man page documents all $n options check-config knows, and no other"
else
	fail "options: check-config (<) vs man page CONFIGURATION (>):"$'\n'"$(diff "$T/keys.program" "$T/keys.man" || true)"
fi

# A second install keeps a config the operator changed, and still refreshes the rest.
echo "; changed by the operator" >>"$root/etc/ctxhookd/ctxhookd.conf"
rm "$bin"
install_root "$root" /usr
if tail -n 1 "$root/etc/ctxhookd/ctxhookd.conf" | grep -q "changed by the operator" &&
	grep -q "Keeping (changed locally)" "$T/install.log" && [ -x "$bin" ]; then
	pass "a reinstall keeps the changed config and puts the program back"
else
	fail "a reinstall overwrote the changed config or did not reinstall the program"
fi

# Another prefix: the unit's paths follow it (GNU rule: etc under the prefix, except for /usr).
root2=$T/root-local
install_root "$root2" /usr/local
unit2=$root2/usr/local/lib/systemd/system/ctxhookd.service
if [ "$(unit_value "$unit2" ExecStart)" = \
	"/usr/local/sbin/ctxhookd run -c /usr/local/etc/ctxhookd/ctxhookd.conf" ] &&
	[ -x "$root2/usr/local/sbin/ctxhookd" ] &&
	[ -f "$root2/usr/local/etc/ctxhookd/ctxhookd.conf" ] &&
	[ "$(unit_value "$unit2" EnvironmentFile)" = "-/usr/local/etc/ctxhookd/ctxhookd.env" ] &&
	[ ! -e "$root2/etc" ]; then
	pass "prefix /usr/local: ExecStart=$(unit_value "$unit2" ExecStart)"
else
	fail "prefix /usr/local: unit or files not where they belong:"$'\n'"$(cd "$root2" && find . -type f)"$'\n'"ExecStart=$(unit_value "$unit2" ExecStart)"
fi

finish
