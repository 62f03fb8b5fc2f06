# Build step for ctxhookd(8), run with cmake -P: copies man/ctxhookd.8 to OUT with the project
# version in its .TH line (the source stays renderable as it is, with whatever version it was
# last edited for), then gzips it when GZIP names a gzip program. -n keeps the file's name and
# time out of the archive, so two builds of one source give the same bytes.
#   cmake -DIN=man/ctxhookd.8 -DOUT=build/man/ctxhookd.8 -DVERSION=0.1.0 [-DGZIP=/bin/gzip]
#         -P cmake/manpage.cmake
file(READ "${IN}" text)
string(REGEX REPLACE "(\n\\.TH [^\n]*)\"ctxhookd [^\"]*\"" "\\1\"ctxhookd ${VERSION}\"" text
  "${text}")
if(NOT text MATCHES "\n\\.TH [^\n]*\"ctxhookd ${VERSION}\"")
  message(FATAL_ERROR "${IN}: no .TH line with \"ctxhookd VERSION\" to put ${VERSION} in")
endif()
file(WRITE "${OUT}" "${text}")
if(GZIP)
  execute_process(COMMAND "${GZIP}" -9 -n -f "${OUT}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${GZIP} -9 -n -f ${OUT} failed: ${rc}")
  endif()
endif()
