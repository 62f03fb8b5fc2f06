# Installation and packaging: where `cmake --install` puts the program, its systemd unit, the
# example configuration, the README and the ctxhookd(8) manual page, and the CPack settings
# that turn the same install into a Debian package (`cpack -G DEB`). The unit and the
# configuration are installed by install-time code rather than plain install() rules because
# their place depends on the prefix given to `cmake --install --prefix`: with /usr (the
# package) the configuration goes to /etc, as GNUInstallDirs does it, and the unit's
# ExecStart= names the program where it was installed. Included once from CMakeLists.txt;
# tests/pkg/ checks the result (ctest -R pkg).

include(GNUInstallDirs)

set(CTXHOOKD_SYSTEMD_UNITDIR "lib/systemd/system" CACHE STRING
  "Where ctxhookd.service is installed; a relative path is under the install prefix")
set(CTXHOOKD_PACKAGE_MAINTAINER "ctxhookd maintainers <ctxhookd@localhost>" CACHE STRING
  "Maintainer field of the Debian package")

install(TARGETS ctxhookd RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})
install(FILES README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES config/ctxhookd.conf DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples)

# ctxhookd(8), with the project's version, gzipped when gzip is there at build time.
find_program(CTXHOOKD_GZIP gzip)
set(CTXHOOKD_MAN_OUT ${CMAKE_CURRENT_BINARY_DIR}/man/ctxhookd.8)
set(CTXHOOKD_MAN_FILE ${CTXHOOKD_MAN_OUT})
if(CTXHOOKD_GZIP)
  set(CTXHOOKD_MAN_FILE ${CTXHOOKD_MAN_OUT}.gz)
endif()
add_custom_command(
  OUTPUT ${CTXHOOKD_MAN_FILE}
  COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/man
  COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_CURRENT_SOURCE_DIR}/man/ctxhookd.8
          -DOUT=${CTXHOOKD_MAN_OUT} -DVERSION=${PROJECT_VERSION} -DGZIP=${CTXHOOKD_GZIP}
          -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/manpage.cmake
  DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/man/ctxhookd.8
          ${CMAKE_CURRENT_SOURCE_DIR}/cmake/manpage.cmake
  COMMENT "Building the ctxhookd(8) manual page"
  VERBATIM)
add_custom_target(ctxhookd_man ALL DEPENDS ${CTXHOOKD_MAN_FILE})
install(FILES ${CTXHOOKD_MAN_FILE} DESTINATION ${CMAKE_INSTALL_MANDIR}/man8)

# The unit and /etc/ctxhookd/ctxhookd.conf. Runs at install time, where CMAKE_INSTALL_PREFIX is
# the prefix of this install; file(INSTALL) puts $DESTDIR in front of absolute destinations.
# A configuration that is already there and differs from the shipped one is the operator's
# and is kept (the shipped one is in the doc directory's examples).
install(CODE "
  set(_ch_src \"${CMAKE_CURRENT_SOURCE_DIR}\")
  set(_ch_tmp \"${CMAKE_CURRENT_BINARY_DIR}/install-tmp\")
  set(_ch_sysconfdir \"${CMAKE_INSTALL_SYSCONFDIR}\")
  set(_ch_sbindir \"${CMAKE_INSTALL_SBINDIR}\")
  set(_ch_unitdir \"${CTXHOOKD_SYSTEMD_UNITDIR}\")
")
install(CODE [[
  # The same rule as GNUInstallDirs' CMAKE_INSTALL_FULL_SYSCONFDIR, at install time.
  string(REGEX REPLACE "/+$" "" _ch_prefix "${CMAKE_INSTALL_PREFIX}")
  if(IS_ABSOLUTE "${_ch_sysconfdir}")
    set(_ch_etc "${_ch_sysconfdir}")
  elseif(_ch_prefix STREQUAL "" OR _ch_prefix STREQUAL "/usr")
    set(_ch_etc "/${_ch_sysconfdir}")
  elseif(_ch_prefix MATCHES "^/opt/")
    set(_ch_etc "/${_ch_sysconfdir}${_ch_prefix}")
  else()
    set(_ch_etc "${_ch_prefix}/${_ch_sysconfdir}")
  endif()
  foreach(_ch_v sbindir unitdir)
    if(NOT IS_ABSOLUTE "${_ch_${_ch_v}}")
      set(_ch_${_ch_v} "${_ch_prefix}/${_ch_${_ch_v}}")
    endif()
  endforeach()

  file(READ "${_ch_src}/systemd/ctxhookd.service" _ch_unit)
  string(REPLACE "/usr/sbin/ctxhookd" "${_ch_sbindir}/ctxhookd" _ch_unit "${_ch_unit}")
  string(REPLACE "/etc/ctxhookd/" "${_ch_etc}/ctxhookd/" _ch_unit "${_ch_unit}")
  # A name of its own: `cmake --install` and cpack may run at the same time on one build.
  string(RANDOM LENGTH 12 _ch_rand)
  file(MAKE_DIRECTORY "${_ch_tmp}/${_ch_rand}")
  file(WRITE "${_ch_tmp}/${_ch_rand}/ctxhookd.service" "${_ch_unit}")
  file(INSTALL DESTINATION "${_ch_unitdir}" TYPE FILE
    PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
    FILES "${_ch_tmp}/${_ch_rand}/ctxhookd.service")
  file(REMOVE_RECURSE "${_ch_tmp}/${_ch_rand}")

  set(_ch_conf "$ENV{DESTDIR}${_ch_etc}/ctxhookd/ctxhookd.conf")
  set(_ch_keep FALSE)
  if(EXISTS "${_ch_conf}")
    file(SHA256 "${_ch_conf}" _ch_have)
    file(SHA256 "${_ch_src}/config/ctxhookd.conf" _ch_new)
    if(NOT _ch_have STREQUAL _ch_new)
      set(_ch_keep TRUE)
    endif()
  endif()
  if(_ch_keep)
    message(STATUS "Keeping (changed locally): ${_ch_conf}")
  else()
    file(INSTALL DESTINATION "${_ch_etc}/ctxhookd" TYPE FILE
      PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
      FILES "${_ch_src}/config/ctxhookd.conf")
  endif()
]])

# The Debian package: `cpack -G DEB` in the build directory (it runs the build's `preinstall`
# target, a no-op on a built tree, then the install above). CPACK_SET_DESTDIR makes that
# install run with prefix /usr under a staging DESTDIR, so the conffile lands in /etc.
find_program(CTXHOOKD_DPKG_SHLIBDEPS dpkg-shlibdeps)
find_program(CTXHOOKD_FILE file)
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ctxhookd)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "${CTXHOOKD_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "conversation context store and event hooks daemon")
# The summary above is the Description's first line; this is the rest.
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
  "ctxhookd keeps agent notes and routing context per conversation behind a REST
Context API that is wire-compatible with the LivePerson Context Session Store
v1, on SQLite. It consumes conversation events from Kafka (or HTTP, or replayed
logs) and calls signed webhooks with the event and its context, durably queued,
retried and dead-lettered. Runs as a hardened systemd service (Type=notify,
watchdog, reload on SIGHUP).")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr) # the prefix CPack installs with under CPACK_SET_DESTDIR
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# procps: ExecReload= runs /bin/kill.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "procps")
if(CTXHOOKD_DPKG_SHLIBDEPS AND CTXHOOKD_FILE)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  # What dpkg-shlibdeps finds on Debian 12.
  string(APPEND CPACK_DEBIAN_PACKAGE_DEPENDS ", libc6 (>= 2.34), libmicrohttpd12, libjansson4, "
    "libsqlite3-0, libinih1, libssl3, libsystemd0, libcurl4, librdkafka1")
endif()
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${CMAKE_CURRENT_SOURCE_DIR}/cmake/deb/conffiles
  ${CMAKE_CURRENT_SOURCE_DIR}/cmake/deb/postinst
  ${CMAKE_CURRENT_SOURCE_DIR}/cmake/deb/prerm
  ${CMAKE_CURRENT_SOURCE_DIR}/cmake/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_SOURCE_GENERATOR TXZ)
set(CPACK_SOURCE_IGNORE_FILES "/\\\\.git/" "/build[^/]*/")
include(CPack)

if(CTXHOOKD_TESTS)
  enable_testing()
  foreach(name pkg_install pkg_deb pkg_unit)
    add_test(NAME ${name}
      COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/tests/pkg/${name}.sh
              ${CMAKE_CURRENT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR})
    set_tests_properties(${name} PROPERTIES TIMEOUT 120 LABELS pkg)
  endforeach()
endif()
