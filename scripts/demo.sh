#!/bin/sh
# Runs the xmpptrack demo ("make demo") against a throw-away Prosody on
# 127.0.0.1: it builds the command and the development server, starts the
# server with the accounts alice and bob, runs "xmpptrack demo", and stops
# the server on the way out, however the demo ends.
set -eu

cd "$(dirname "$0")/.."
GO=${GO:-go}
USERS=alice:alice-demo,bob:bob-demo

dir=$(mktemp -d "${TMPDIR:-/tmp}/xmpptrack-demo.XXXXXX")
server=
cleanup() {
	if [ -n "$server" ]; then
		kill "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building xmpptrack and the development server..."
"$GO" build -o "$dir/xmpptrack" ./cmd/xmpptrack
"$GO" build -o "$dir/devprosody" ./integration/cmd/devprosody

echo "starting Prosody on 127.0.0.1 with the accounts alice and bob..."
"$dir/devprosody" -users "$USERS" -env "$dir/env" >"$dir/devprosody.log" 2>&1 &
server=$!
tries=0
until [ -s "$dir/env" ]; do
	if ! kill -0 "$server" 2>/dev/null; then
		echo "the development server failed to start:" >&2
		cat "$dir/devprosody.log" >&2
		server=
		exit 1
	fi
	tries=$((tries + 1))
	if [ "$tries" -gt 300 ]; then
		echo "the development server did not start within 30s:" >&2
		cat "$dir/devprosody.log" >&2
		exit 1
	fi
	sleep 0.1
done
. "$dir/env"
echo "Prosody is listening on $XMPP_ADDR"

"$dir/xmpptrack" demo -addr "$XMPP_ADDR" -ca "$XMPP_CA" -domain "$XMPP_DOMAIN" -muc "$XMPP_MUC" -users "$USERS"
