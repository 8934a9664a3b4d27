# syntax=docker/dockerfile:1
# Build: docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#          --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) -t chatgate .
ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS deps
WORKDIR /src
# Dependencies only: this layer is rebuilt when Cargo.toml/Cargo.lock change, not on every
# source edit. The stub targets are replaced in the next stage.
COPY Cargo.toml Cargo.lock ./
# Cargo refuses a manifest whose declared [[bench]] targets have no file: stub them too.
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for b in metrics_aggregator rate_limiter ws_frames; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked \
    && rm -rf src

FROM deps AS build
COPY src ./src
COPY migrations ./migrations
# Make cargo see the real sources as newer than the stub build.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin chatgate

FROM debian:bookworm-slim AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="chatgate" \
      org.opencontainers.image.description="Real-time LLM chat gateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home chatgate
COPY --from=build /src/target/release/chatgate /usr/local/bin/chatgate
USER chatgate
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
