# pg_webhooks. Every target installs what it needs first (scripts/bootstrap.sh),
# so each works on a bare Debian 12 machine and is safe to run again.
#
# Supported PostgreSQL majors: 15, 16 and 18 (PG). `make test` builds and
# tests all three; `make test PG=16` one of them. Other targets use
# PG_CONFIG (Debian's PostgreSQL 15 unless given).

PG ?= 15 16 18
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all setup build install test test-major unit lint demo bench bench-quick soak clean

all: build

setup:
	@bash scripts/bootstrap.sh

build: setup
	$(CARGO) build --release -p pg_webhooks

# Installs the extension into the PostgreSQL of $(PG_CONFIG): the library,
# this version's script, the upgrade scripts, and the earlier releases'
# scripts (sql/archive) so that `ALTER EXTENSION ... UPDATE` can start there.
# cargo pgrx builds for the major that pg_config reports.
install: setup
	$(CARGO) pgrx install --release -p pg_webhooks --pg-config $(PG_CONFIG)
	install -m 644 sql/archive/*.sql "$$($(PG_CONFIG) --sharedir)/extension/"

# Every test: the pure crate's unit tests, then, for each major of $(PG),
# the extension installed there and the end-to-end suite against throwaway
# clusters of that major.
test: setup
	$(CARGO) test -p pg_webhooks_core
	@for v in $(PG); do \
	  echo "== PostgreSQL $$v"; \
	  $(MAKE) --no-print-directory test-major MAJOR=$$v || exit 1; \
	done

test-major:
	$(MAKE) --no-print-directory install PG_CONFIG=$$(bash scripts/pg_config_for.sh $(MAJOR))
	PGWH_PG_MAJOR=$(MAJOR) PGWH_PG_BIN=$$($$(bash scripts/pg_config_for.sh $(MAJOR)) --bindir) $(CARGO) test -p pg_webhooks_tests

unit:
	$(CARGO) test -p pg_webhooks_core

# The habits CI holds the tree to: rustfmt.toml's formatting, and clippy
# with every warning an error (SAFETY comments on unsafe blocks included).
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The 10-minute soak (docs/reliability.md); make test runs a 20-second one.
soak: install
	PGWH_SOAK_SECS=600 $(CARGO) test -p pg_webhooks_tests --test soak -- --nocapture

demo: install
	@bash scripts/demo.sh

# The benchmark (docs/benchmarks.md), on PostgreSQL 15: needs PgQ and wrk
# besides the rest.
bench: export EXTRA_APT_PACKAGES = postgresql-15-pgq3 wrk
bench: install
	$(CARGO) run --release -p pg_webhooks_bench --bin pgwh-bench -- --out docs/benchmarks.md

bench-quick: export EXTRA_APT_PACKAGES = postgresql-15-pgq3 wrk
bench-quick: install
	$(CARGO) run --release -p pg_webhooks_bench --bin pgwh-bench -- --quick

clean:
	$(CARGO) clean
