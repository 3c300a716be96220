# Build, test and CI entry points. "make test" is the one command to run the
# whole suite; it needs Prosody and ejabberd (see "make prosody-install" and
# "make ejabberd-install").

GO ?= go
GOFLAGS_TEST ?= -race -count=1 -timeout 30m

# Debian's Prosody 0.12; apt-get needs root, so prefix sudo when not root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: all test vet prosody-install ejabberd-install

all: test

## test: vet, then run every test (the integration tests start Prosody and
## ejabberd).
test: vet
	$(GO) test $(GOFLAGS_TEST) ./...

## vet: go vet every package.
vet:
	$(GO) vet ./...

## prosody-install: install Prosody from Debian's packages unless present.
## Recommends (libevent, readline, unbound bindings) are not needed here.
prosody-install:
	@if command -v prosody >/dev/null 2>&1 || [ -x /usr/bin/prosody ]; then \
		echo "prosody is already installed"; \
	else \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prosody; \
	fi

## ejabberd-install: install ejabberd (23.01 on Debian 12) from Debian's
## packages unless present. The tests run it as a plain process; the package's
## own service is not needed.
ejabberd-install:
	@if [ -x /usr/sbin/ejabberdctl ] || command -v ejabberdctl >/dev/null 2>&1; then \
		echo "ejabberd is already installed"; \
	else \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ejabberd; \
	fi

.PHONY: demo bench

## demo: a guided tour: tracked messages against a throw-away local Prosody
## (installed first if missing). The work is in scripts/demo.sh.
demo: prosody-install
	@sh scripts/demo.sh

## bench: the end-to-end benchmark against Prosody (xmpptrack with and without
## the outbox beside a raw client) and against ejabberd without a room archive
## (xmpptrack beside the raw client), the memory of 100,000 tracked messages in flight, a listener in a
## busy room (xmpptrack beside the raw client), and 10, 100 and 1,000 streams
## in one process (20 s of work each; -work 1m for the issue's full minute).
bench: prosody-install ejabberd-install
	$(GO) run ./bench/e2e -reps 7 -o bench/results.json
	$(GO) test -run '^$$' -bench InFlight -benchtime 1x ./bench
	$(GO) run ./bench/inbound -reps 7 -o bench/results-inbound.json
	$(GO) run ./bench/scale -o bench/results-scale.json
