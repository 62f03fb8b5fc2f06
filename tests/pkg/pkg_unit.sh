#!/bin/bash
# pkg_unit: the installed ctxhookd.service is clean for `systemd-analyze verify` and rated at
# most 2.0 by `systemd-analyze security --offline=true`, and has the settings the daemon and
# the operators rely on. verify checks that every command of the unit exists, so it runs with
# --root= on a `cmake --install` into a DESTDIR, to which this test adds what a Debian 12 host
# around the package provides: systemd's own units (sysinit.target, ...) and /bin/kill from
# procps (a Depends of the package), copied from this machine. MANPATH points man at the
# installed pages for the unit's Documentation=man:ctxhookd(8).
# Usage: pkg_unit.sh SOURCE_DIR BUILD_DIR (registered with ctest as pkg_unit).
# shellcheck source=tests/pkg/lib.sh
source "$(dirname "$0")/lib.sh"

root=$T/root
install_root "$root" /usr
unit=$root/usr/lib/systemd/system/ctxhookd.service
[ -f "$unit" ] || {
	fail "no usr/lib/systemd/system/ctxhookd.service after cmake --install"
	finish
}

# The settings, as the last assignment of each key (a later line overrides an earlier one).
check_setting() {
	local got
	got=$(unit_value "$unit" "$1")
	if [ "$got" = "$2" ]; then
		pass "$1=$2"
	else
		fail "$1 is '$got', expected '$2'"
	fi
}
check_setting Type notify
check_setting NotifyAccess main
check_setting ExecStart "/usr/sbin/ctxhookd run -c /etc/ctxhookd/ctxhookd.conf"
# shellcheck disable=SC2016 # $MAINPID is systemd's, not the shell's
check_setting ExecReload '/bin/kill -HUP $MAINPID'
check_setting WatchdogSec 20s
check_setting TimeoutStopSec 30
check_setting Restart on-failure
check_setting StateDirectory ctxhookd
check_setting ConfigurationDirectory ctxhookd
check_setting DynamicUser yes
check_setting ProtectSystem strict
check_setting NoNewPrivileges yes
check_setting PrivateTmp yes
check_setting MemoryDenyWriteExecute yes
check_setting CapabilityBoundingSet ""
check_setting RestrictAddressFamilies "AF_INET AF_INET6 AF_UNIX"
grep -qx 'SystemCallFilter=@system-service' "$unit" || fail "no SystemCallFilter=@system-service"

# The host parts of the verify root. A unit file of ours wins over a copy of the host's.
cp -rn /lib/systemd/system/. "$root/usr/lib/systemd/system/"
mkdir -p "$root/usr/bin"
cp /bin/kill "$root/usr/bin/kill"
ln -s usr/bin "$root/bin"

verify() {
	MANPATH=$root/usr/share/man SYSTEMD_LOG_COLOR=0 \
		systemd-analyze verify --root="$root" "$1" >"$T/verify.out" 2>&1
}
if verify ctxhookd.service && [ ! -s "$T/verify.out" ]; then
	pass "systemd-analyze verify --root: clean"
else
	fail "systemd-analyze verify --root: $(cat "$T/verify.out")"
fi
# The same check sees a broken unit in this root, so a clean result above means something.
sed -e 's/^WatchdogSec=.*/WatchdogSecs=20s/' -e 's|^ExecReload=/bin/kill|ExecReload=/bin/kil|' \
	"$unit" >"$root/usr/lib/systemd/system/ctxhookd-broken.service"
verify ctxhookd-broken.service || true
if grep -q "Unknown key 'WatchdogSecs'" "$T/verify.out" &&
	grep -q "/bin/kil is not executable" "$T/verify.out"; then
	pass "systemd-analyze verify --root reports a misspelt key and a missing command"
else
	fail "systemd-analyze verify missed the broken copy: $(cat "$T/verify.out")"
fi
rm "$root/usr/lib/systemd/system/ctxhookd-broken.service"

# The exposure figure; 2.0 is the most the service may have.
SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=true --no-pager --root="$root" \
	ctxhookd.service >"$T/security.out" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for ctxhookd\.service: \([0-9.]*\).*/\1/p' \
	"$T/security.out")
if [ -z "$score" ]; then
	fail "no exposure level in: $(cat "$T/security.out")"
elif awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
	pass "systemd-analyze security --offline=true: exposure $score (at most 2.0)"
else
	fail "exposure $score is above 2.0"
fi
# The same reading of an unhardened unit gives a high figure: the parse reads the real one.
printf '[Service]\nExecStart=/usr/sbin/ctxhookd run\n' \
	>"$root/usr/lib/systemd/system/ctxhookd-bare.service"
bare=$(SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=true --no-pager --root="$root" \
	ctxhookd-bare.service 2>&1 |
	sed -n 's/.*Overall exposure level for ctxhookd-bare\.service: \([0-9.]*\).*/\1/p' || true)
if [ -n "$bare" ] && awk -v s="$bare" 'BEGIN { exit !(s > 5.0) }'; then
	pass "an unhardened unit is rated $bare"
else
	fail "an unhardened unit is rated '$bare', expected above 5.0"
fi

finish
