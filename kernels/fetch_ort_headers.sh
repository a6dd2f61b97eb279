#!/bin/sh
# Fetch ONNX Runtime's C/C++ API headers into DEST/include (DEST/include/onnxruntime_c_api.h, ...).
#
# The onnxruntime pip wheel ships no headers. Debian trixie's libonnxruntime-dev (1.21) has them, and the
# C API is versioned, so a library built against them loads into newer runtimes. The package is fetched
# through a private apt setup (sources list, package lists and cache under DEST/apt) naming the `trixie main`
# suite of the Debian mirror the system's own apt sources use; the system's apt setup is left alone.
set -eu

dest=${1:?usage: fetch_ort_headers.sh DEST}
if [ -f "$dest/include/onnxruntime_c_api.h" ]; then
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
  echo "fetch_ort_headers: needs apt-get and dpkg-deb (a Debian-based system)" >&2; exit 1; }

# The mirror: first URI of a system source (one-line .list or deb822 .sources) that serves a Debian
# release suite (no "-security"/"-updates" suffix) from a /debian path.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
  /^[[:space:]]*deb[[:space:]]/ {
    sub(/\[[^]]*\][[:space:]]*/, "")
    if ($2 ~ /\/debian\/?$/ && $3 !~ /-/) { print $2; exit }
  }
  /^URIs:/   { uri = $2 }
  /^Suites:/ { if (uri ~ /\/debian\/?$/) for (i = 2; i <= NF; i++) if ($i !~ /-/) { print uri; exit } }
  /^[[:space:]]*$/ { uri = "" }')
if [ -z "$mirror" ]; then
  echo "fetch_ort_headers: no Debian mirror in the system's apt sources; set ONNXRUNTIME_INCLUDE_DIR to ONNX Runtime's headers instead" >&2
  exit 1
fi

apt_dir="$dest/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" > "$apt_dir/sources.list"
# Private lists and cache; no translations; downloads as the calling user (the private folders are its own).
set -- -q -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null \
  -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o Acquire::Languages=none \
  -o APT::Sandbox::User="$(id -un)"
echo "fetch_ort_headers: libonnxruntime-dev from $mirror trixie main"
apt-get "$@" update >/dev/null
(cd "$apt_dir/deb" && apt-get "$@" download libonnxruntime-dev >/dev/null)
deb=$(ls "$apt_dir"/deb/libonnxruntime-dev_*.deb | head -n 1)
rm -rf "$dest/pkg" && dpkg-deb -x "$deb" "$dest/pkg"
hdr=$(dirname "$(find "$dest/pkg" -name onnxruntime_c_api.h | head -n 1)")
[ -f "$hdr/onnxruntime_c_api.h" ] || { echo "fetch_ort_headers: $deb has no onnxruntime_c_api.h" >&2; exit 1; }
rm -rf "$dest/include.tmp" && cp -r "$hdr" "$dest/include.tmp" && mv "$dest/include.tmp" "$dest/include"
rm -rf "$apt_dir/lists" "$apt_dir/cache"  # the package lists are large and no longer needed
echo "fetch_ort_headers: headers in $dest/include ($(basename "$deb"))"
