#!/bin/sh
# plugin_guide.sh - checks docs/plugin-guide.md for real: installs Fathom into a
# temporary prefix, builds plugins/stub/stub.c out of tree as "mystub" with only
# `pkg-config --cflags fathom`, and asks the installed `fathom plugins` whether it
# sees both mystub (from FATHOM_PLUGIN_PATH) and its own installed plugins (from
# <prefix>/lib/fathom/plugins). Build folder: $FATHOM_BUILD (default build).
# Last line: "1 passed, 0 failed" or "0 passed, 1 failed".

root=$(cd "$(dirname "$0")/.." && pwd -P) || exit 1
cd "$root" || exit 1
B=${FATHOM_BUILD:-build}
CC=${CC:-cc}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fathom-plugin-guide.XXXXXX") || {
    echo "plugin_guide: cannot make a temporary folder"
    echo "0 passed, 1 failed"
    exit 1
}
tmp=$(cd "$tmp" && pwd -P)   # the loader reports real paths
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

problems=0
fail() {
    echo "plugin_guide: FAIL: $*"
    problems=$((problems + 1))
}
finish() {
    if [ "$problems" -eq 0 ]; then
        echo "plugin_guide: ok: out-of-tree plugin built against the installed fathom.pc and loaded"
        echo "1 passed, 0 failed"
        exit 0
    fi
    echo "plugin_guide: $problems problem(s)"
    echo "0 passed, 1 failed"
    exit 1
}

# 1. install into the temporary prefix
if ! make install B="$B" PREFIX="$tmp" >"$tmp/install.log" 2>&1; then
    tail -n 20 "$tmp/install.log"
    fail "make install B=$B PREFIX=$tmp failed (log above)"
    finish
fi
for f in bin/fathom include/fathom/fathom.h include/fathom/plugin.h include/fathom/ops.def \
         lib/pkgconfig/fathom.pc lib/fathom/plugins/libfathom-stub.so; do
    [ -e "$tmp/$f" ] || fail "make install did not install $f"
done

# 2. the installed fathom.pc must describe this prefix
PKG_CONFIG_PATH="$tmp/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
prefix=$(pkg-config --variable=prefix fathom 2>&1)
[ "$prefix" = "$tmp" ] ||
    fail "installed fathom.pc says prefix '$prefix', expected '$tmp' (a fathom.pc left in $B/ from an earlier build with another PREFIX?)"
cflags=$(pkg-config --cflags fathom) || fail "pkg-config --cflags fathom failed"

# 3. build the stub out of tree, from a copy, with only the installed headers
mkdir -p "$tmp/src" "$tmp/myplugins"
cp plugins/stub/stub.c "$tmp/src/mystub.c"
built=1
# shellcheck disable=SC2086 # cflags is a word list
if ! (cd "$tmp/src" && $CC -shared -fPIC $cflags -DSTUB_NAME='"mystub"' \
        -o "$tmp/myplugins/libfathom-mystub.so" mystub.c) >"$tmp/cc.log" 2>&1; then
    cat "$tmp/cc.log"
    fail "compiling stub.c out of tree with '$cflags' failed (log above)"
    built=0
fi

# 4. the installed CLI lists mystub and its own installed plugins
out=$(cd "$tmp" && FATHOM_PLUGIN_PATH="$tmp/myplugins" "$tmp/bin/fathom" plugins 2>&1)
rc=$?
printf '%s\n' "$out"
[ $rc -eq 0 ] || fail "'fathom plugins' exited with status $rc"
if [ $built -eq 1 ]; then
    printf '%s\n' "$out" | grep -Eq '^mystub +[^ ]+ +ready ' ||
        fail "mystub is not listed as ready (FATHOM_PLUGIN_PATH=$tmp/myplugins)"
    printf '%s\n' "$out" | grep -Fq "from $tmp/myplugins/libfathom-mystub.so" ||
        fail "mystub was not loaded from $tmp/myplugins"
fi
if ! { printf '%s\n' "$out" | grep -Eq '^stub +[^ ]+ +ready ' &&
        printf '%s\n' "$out" | grep -Fq "from $tmp/lib/fathom/plugins/libfathom-stub.so"; }; then
    fail "the installed fathom did not find its own plugins in $tmp/lib/fathom/plugins (the loader searches <folder of the executable or libfathom>/plugins and <folder>/fathom/plugins; the CLI links the core statically, so that folder is $tmp/bin)"
fi

finish
