#!/usr/bin/env bash
# REST with curl: HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on the listener's one port.
# Usage: rest_curl.sh HOST:PORT BODY_FILE   (BODY_FILE: an Arrow IPC stream of 777 rows)
set -u
addr=$1
body=$2
passed=0
failed=0
check() { # name, expected, actual
  if [ "$2" = "$3" ]; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1: expected [$2] got [$3]"; fi
}

out=$(curl -sS --http1.1 -H 'Content-Type: application/vnd.apache.arrow.stream' --data-binary "@$body" "http://$addr/streams/curled")
check "http/1.1 ingest" '"rows":777' "$(grep -o '"rows":[0-9]*' <<<"$out")"

out=$(curl -sS --http2-prior-knowledge -H 'Content-Type: application/vnd.apache.arrow.stream' --data-binary "@$body" "http://$addr/streams/curled")
check "h2c ingest" '"rows":777' "$(grep -o '"rows":[0-9]*' <<<"$out")"

code=$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge "http://$addr/health")
check "h2c health" 200 "$code"

code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: text/plain' --data-binary "@$body" "http://$addr/streams/curled")
check "wrong content type" 415 "$code"

echo "curl: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
