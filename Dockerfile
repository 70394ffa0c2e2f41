# lbx-relay: multi-stage build, non-root runtime with the binary, the example configs and templates.
# A connector: docker run -e LBX_CONFIG=/etc/lbx-relay/examples/brevo.toml -e BREVO_API_KEY=… …
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml build.rs routes.toml ./
COPY .cargo ./.cargo
COPY examples ./examples
COPY templates ./templates
COPY contracts ./contracts
COPY src ./src
COPY assets ./assets
COPY benches ./benches
RUN cargo build --release --locked --bin lbx-relay

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/lbx-relay --create-home lbx
COPY --from=build /src/target/release/lbx-relay /usr/local/bin/lbx-relay
COPY routes.toml /etc/lbx-relay/routes.toml
COPY templates /etc/lbx-relay/templates
COPY examples /etc/lbx-relay/examples
COPY contracts /etc/lbx-relay/contracts
USER 10001
WORKDIR /var/lib/lbx-relay
ENV LBX_CONFIG=/etc/lbx-relay/routes.toml \
    LBX_STORE_URL=sqlite:///var/lib/lbx-relay/relay.db \
    LBX_LISTEN=0.0.0.0:8080 \
    LBX_ADMIN_LISTEN=0.0.0.0:9090
VOLUME ["/var/lib/lbx-relay"]
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/lbx-relay"]
CMD ["serve"]
