#!/usr/bin/env bash
# Refresh the map page's third-party files from npm (make vendor-map): Leaflet, topojson-client
# and Natural Earth's borders (world-atlas), each with its license, into static/map/vendor/.
# They are committed: the service and the bento serve them offline, no CDN at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
LEAFLET=leaflet@1.9.4
TOPOJSON=topojson-client@3.1.0
ATLAS=world-atlas@2.0.2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$LEAFLET" "$TOPOJSON" "$ATLAS" >/dev/null)
vendor=static/map/vendor
rm -rf "$vendor"
mkdir -p "$vendor/leaflet/images" "$vendor/topojson-client" "$vendor/world-atlas"
unpack() { mkdir -p "$work/$1" && tar xzf "$work"/$1-*.tgz -C "$work/$1"; }
unpack leaflet && unpack topojson-client && unpack world-atlas
cp "$work"/leaflet/package/dist/{leaflet.js,leaflet.css} "$work"/leaflet/package/LICENSE "$vendor/leaflet/"
cp "$work"/leaflet/package/dist/images/*.png "$vendor/leaflet/images/"
cp "$work"/topojson-client/package/dist/topojson-client.min.js \
   "$work"/topojson-client/package/LICENSE "$vendor/topojson-client/"
cp "$work"/world-atlas/package/{countries-50m.json,LICENSE} "$vendor/world-atlas/"
printf '%s\n' "$LEAFLET" "$TOPOJSON" "$ATLAS" > "$vendor/VERSIONS"
echo "vendored into $vendor: $(tr '\n' ' ' < "$vendor/VERSIONS")"
