# shellcheck shell=bash disable=SC2034
# Pinned versions of the servers the native stack builds with `go install` (sourced by install.sh and stack.sh).
# A binary is cached as <cache>/bin/<name>-<version>, so changing a pin here rebuilds it on the next `make up`.

# FerretDB 1.x: MongoDB wire protocol on top of SQLite, no separate database server needed.
FERRETDB_MODULE=github.com/FerretDB/FerretDB
FERRETDB_VERSION=v1.24.2

# MinIO publishes no semver tags (its RELEASE.* tags are not valid Go module versions), so it is pinned by the
# pseudo-version of one commit: 7aac2a2c5b7c (2026-02-12), what `@latest` resolved to when it was pinned.
MINIO_MODULE=github.com/minio/minio
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
