# shellcheck shell=bash disable=SC2034
# Pinned versions of the servers the native stack builds with Go (sourced by install.sh and stack.sh, which set
# REPO). A binary is cached as <cache>/bin/<name>-<version>[-<patch hash>], so changing a pin here, or our
# FerretDB patch, rebuilds it on the next `make up`.

# FerretDB 1.x: MongoDB wire protocol on top of SQLite, no separate database server needed. v1.24.2 is the last
# 1.x release. We build it with scripts/ferretdb/pixpress.patch (see scripts/ferretdb/README.md, docs/ferretdb.md),
# so the cached binary's name carries the first 12 hex digits of the patch's SHA-256: a changed patch never
# reuses a binary built without it.
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2
FERRETDB_PATCH=$REPO/scripts/ferretdb/pixpress.patch
FERRETDB_PATCH_HASH=$(sha256sum "$FERRETDB_PATCH" | cut -c1-12)
FERRETDB_BINARY=ferretdb-$FERRETDB_VERSION-pixpress-$FERRETDB_PATCH_HASH

# MinIO publishes no semver tags (its RELEASE.* tags are not valid Go module versions), so it is pinned by the
# pseudo-version of one commit: 7aac2a2c5b7c (2026-02-12), what `@latest` resolved to when it was pinned.
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
MINIO_BINARY=minio-$MINIO_VERSION

# promtool (checks and unit-tests deploy/observability's alert rules) and promcheck (our PromQL metric-name lister),
# both built from the Go module in scripts/prometheus, which pins Prometheus (v0.316.0 = Prometheus v3.16.0). The
# binaries' names carry a hash of that module's go.mod, go.sum and main.go and of promtool's build tags, so a new
# pin rebuilds them. The tags leave out Prometheus's service-discovery plugins but DNS (the compose scrape config
# uses it): install.sh says why.
PROMETHEUS_TOOLS_DIR=$REPO/scripts/prometheus
PROMTOOL_TAGS="remove_all_sd enable_dns_sd"
PROMETHEUS_TOOLS_HASH=$( (cat "$PROMETHEUS_TOOLS_DIR/go.mod" "$PROMETHEUS_TOOLS_DIR/go.sum" "$PROMETHEUS_TOOLS_DIR/main.go" &&
    printf '%s\n' "$PROMTOOL_TAGS") | sha256sum | cut -c1-12)
PROMTOOL_BINARY=promtool-$PROMETHEUS_TOOLS_HASH
PROMCHECK_BINARY=promcheck-$PROMETHEUS_TOOLS_HASH
