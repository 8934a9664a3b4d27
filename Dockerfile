# syntax=docker/dockerfile:1
# Build: docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#          --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t chatgate .
# Release images come from .github/workflows/docker.yml, which passes the same arguments from
# the pushed tag and commit (never from `git describe`).
#
# RUST_VERSION follows `rust-version` in Cargo.toml: the locked dependencies need that rustc
# (tests/release_files.rs keeps the two equal).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS deps
WORKDIR /src
# Dependencies only: this layer is rebuilt when Cargo.toml/Cargo.lock change, not on every
# source edit. Cargo will not load a manifest whose declared targets have no source file, so
# the script writes a stub for src/main.rs, src/lib.rs and every [[bin]]/[[test]]/[[bench]]/
# [[example]] Cargo.toml declares (copying benches/ or tests/ here instead would rebuild all
# dependencies whenever one of them changed). The stubs under src/ are replaced in the next
# stage; the others stay, so `cargo build` there still finds every declared target.
COPY Cargo.toml Cargo.lock ./
COPY deploy/docker/stub-cargo-targets.sh /usr/local/bin/stub-cargo-targets
RUN sh /usr/local/bin/stub-cargo-targets Cargo.toml \
    && cargo build --release --locked \
    && rm -rf src

FROM deps AS build
COPY src ./src
COPY migrations ./migrations
# Make cargo see the real sources as newer than the stub build. The release profile strips
# debug info (Cargo.toml); the check stops a build that would ship it anyway.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin chatgate \
    && if readelf -S target/release/chatgate | grep -q '\.debug_'; then \
         echo "target/release/chatgate still has debug sections" >&2; exit 1; \
       fi

FROM debian:bookworm-slim AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="chatgate" \
      org.opencontainers.image.description="Real-time LLM chat gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 chatgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --create-home chatgate
COPY --from=build /src/target/release/chatgate /usr/local/bin/chatgate
# Numeric, so Kubernetes' runAsNonRoot can verify it without a runAsUser override.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENV CHATGATE_BIND=0.0.0.0:8080 \
    DATABASE_URL=/data/chatgate.db \
    RUST_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatgate"]
CMD ["serve"]
