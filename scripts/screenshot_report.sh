#!/usr/bin/env bash
# Screenshot a report page in headless Chromium, as a reader's browser shows it:
#   scripts/screenshot_report.sh fvwork/report/report.html report.png [WIDTH] [HEIGHT]
# WIDTH defaults to 1,400 px (a laptop window; the comparison table must fit it), HEIGHT to 10,000 px
# (the full page; the rest stays white). Needs Chromium: `apt-get install chromium-headless-shell`
# (Debian) or any chromium/google-chrome on PATH. The page is self-contained, so nothing is fetched.
set -euo pipefail
page=$(realpath "$1"); out=$2; width=${3:-1400}; height=${4:-10000}
browser=$(command -v chromium-headless-shell || command -v chromium || command -v chromium-browser \
          || command -v google-chrome || true)
[ -n "$browser" ] || { echo "no Chromium found (apt-get install chromium-headless-shell)" >&2; exit 3; }
args=(--no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1
      --window-size="$width,$height" --screenshot="$(realpath -m "$out")")
case $(basename "$browser") in chromium-headless-shell) ;; *) args=(--headless "${args[@]}") ;; esac
"$browser" "${args[@]}" "file://$page" 2>/dev/null
echo "$out"
