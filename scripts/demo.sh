#!/usr/bin/env bash
# Sets everything up if needed, starts the sample inventory service, piles
# requests up behind its slow reindex, snapshots it, and shows what every
# goroutine is doing and the captured values.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
export PATH="$here/.venv/bin:$PATH" GOTOOLCHAIN=local GOPROXY=off CGO_ENABLED=0
work=$(mktemp -d)
# The service dies of our SIGTERM: its status (143) must not become the demo's.
trap 'kill $svc 2>/dev/null; wait $svc 2>/dev/null || true; rm -rf "$work"' EXIT

(cd examples/inventory && go build -o "$work/inventory" .)
"$work/inventory" > "$work/out" 2>&1 &
svc=$!
for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
addr=$(awk '/listening on/ {print $3}' "$work/out")
echo "== inventory service pid $svc on $addr"
curl -s "http://$addr/reindex" >/dev/null
sleep 0.2
for sku in sku-001 sku-007 sku-042; do (curl -s --max-time 30 "http://$addr/item/$sku" >/dev/null &) ; done
sleep 0.5

echo "== exray snapshot   (in examples/inventory: exray.yaml names the target, so no arguments)"
(cd examples/inventory && exray snapshot -o "$work/snap.sqlite")
echo
echo "== exray goroutines (what every goroutine is doing)"
exray goroutines "$work/snap.sqlite"
echo
echo "== the requests stuck in main.(*store).lookup, and the reindex holding the lock"
exray sql "$work/snap.sqlite" "SELECT goid, req_ID, req_Path, sku, started FROM main_store_lookup ORDER BY req_ID"
exray sql "$work/snap.sqlite" "SELECT goid, pause, s_reindexN FROM main_store_reindex"
echo
echo "== the spec's report: lookups queued on the store lock, oldest first"
exray sql "$work/snap.sqlite" "SELECT * FROM waiting_lookups"
echo
echo "== following the link from the oldest queued lookup to the goroutine holding the lock"
row=$(exray sql "$work/snap.sqlite" "SELECT rowid AS row FROM main_store_lookup ORDER BY started LIMIT 1" | awk 'NR==3 {print $1}')
exray links "$work/snap.sqlite" main_store_lookup "$row"
