# hyfleet container image: a release build in the Rust image, run from a slim Debian as a
# non-root user. Build with BuildKit (the default of current Docker): the cache mounts keep the
# crate registry and compiled dependencies between builds.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# rumqttc as patched for hyfleet (Cargo.toml's [patch.crates-io]; vendor/rumqttc/PATCHED.md).
COPY vendor/rumqttc ./vendor/rumqttc
COPY src ./src
COPY schemas ./schemas
COPY data ./data
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hyfleet \
    && cp target/release/hyfleet /usr/local/bin/hyfleet

FROM debian:bookworm-slim
# Webhook receivers are reached over HTTPS: the system's CA certificates verify them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /opt/hyfleet --shell /usr/sbin/nologin hyfleet
COPY --from=build /usr/local/bin/hyfleet /usr/local/bin/hyfleet
# Default relative paths (geo.zones_file = data/xiaoyi/zones.geojson) resolve from here.
WORKDIR /opt/hyfleet
COPY data ./data
USER hyfleet
ENV HYFLEET_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hyfleet"]
CMD ["serve"]
