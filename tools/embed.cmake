# Turns the file IN into a C source OUT defining `const char config_embedded_text[]`.
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "(char)0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* Generated from ${IN}; do not edit. */\nextern const char config_embedded_text[];\nconst char config_embedded_text[] = {${bytes}0x00};\n")
