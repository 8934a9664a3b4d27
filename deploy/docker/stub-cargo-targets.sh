#!/bin/sh
# Creates a placeholder source file for every build target a Cargo manifest declares, so the
# Dockerfile's `deps` stage can compile all dependencies from Cargo.toml + Cargo.lock alone
# (one cached layer) before the real sources are copied in.
#
# Cargo refuses to load a manifest whose declared targets have no source file: a later
# `[[bench]] name = "throughput"` without benches/throughput.rs fails with "can't find
# `throughput` bench". Copying benches/, tests/ and examples/ into the deps stage instead would
# rebuild every dependency whenever one of those files changes. So this reads the
# `[lib]`, `[[bin]]`, `[[test]]`, `[[bench]]` and `[[example]]` tables (explicit `path`, or
# Cargo's default path for the `name`) and writes `fn main() {}` (an empty file for the lib).
# src/main.rs and src/lib.rs are always stubbed, as before. Existing files are left alone.
#
# Usage: stub-cargo-targets.sh [MANIFEST]   (default Cargo.toml; paths relative to the cwd)
# POSIX sh + awk only (Debian's mawk in the rust image); tests/release_files.rs runs it.
set -eu

manifest="${1:-Cargo.toml}"

targets=$(awk '
function value(line,    q, i) {
    sub(/^[^=]*=[ \t]*/, "", line)
    q = substr(line, 1, 1)
    line = substr(line, 2)
    i = index(line, q)
    return (i > 0) ? substr(line, 1, i - 1) : ""
}
function flush(    p) {
    if (kind != "") {
        p = path
        if (p == "") {
            if (kind == "lib") p = "src/lib.rs"
            else if (kind == "bin") p = (name == pkg) ? "src/main.rs" : "src/bin/" name ".rs"
            else if (kind == "test") p = "tests/" name ".rs"
            else if (kind == "bench") p = "benches/" name ".rs"
            else if (kind == "example") p = "examples/" name ".rs"
        }
        if (p != "") print kind " " p
    }
    kind = ""; name = ""; path = ""
}
/^[ \t]*\[/ {
    flush()
    s = $0
    sub(/#.*/, "", s)
    gsub(/[ \t]/, "", s)
    gsub(/\[/, "", s)
    gsub(/\]/, "", s)
    section = s
    if (s == "lib" || s == "bin" || s == "test" || s == "bench" || s == "example") kind = s
    next
}
section == "package" && /^[ \t]*name[ \t]*=/ { pkg = value($0) }
kind != "" && /^[ \t]*name[ \t]*=/ { name = value($0) }
kind != "" && /^[ \t]*path[ \t]*=/ { path = value($0) }
END { flush() }
' "$manifest")

stub() {
    [ -e "$2" ] && return 0
    mkdir -p "$(dirname "$2")"
    if [ "$1" = lib ]; then
        : >"$2"
    else
        echo 'fn main() {}' >"$2"
    fi
}

stub bin src/main.rs
stub lib src/lib.rs
printf '%s\n' "$targets" | while read -r kind path; do
    [ -n "$kind" ] && stub "$kind" "$path"
done
exit 0
