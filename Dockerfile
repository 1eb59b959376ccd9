# syntax=docker/dockerfile:1
#
# Portcullis container image.
#
#   docker build -t portcullis .
#   docker run -d -p 80:80 -p 443:443 \
#     -v ./portcullis.toml:/etc/portcullis/portcullis.toml:ro \
#     -v portcullis-state:/var/lib/portcullis portcullis
#
# The config is not baked in: mount yours at /etc/portcullis/portcullis.toml
# (config/compose.yaml mounts config/compose.toml there). The image runs as
# an unprivileged user; it can bind 80/443 because Docker sets
# net.ipv4.ip_unprivileged_port_start=0 in the container (compose.yaml says
# so explicitly).
#
# Stages: `runtime-base` (everything but the binary), `prebuilt` (a binary
# you built yourself, at dist/portcullis in the context: the test suite uses
# it; users never need it), `build` (cargo, the stripped `dist` profile) and
# the default last stage, `runtime`. `prebuilt` comes before `build` so that
# `docker build --target prebuilt` never runs cargo, even with the classic
# builder (which builds every stage before its target).

# --- runtime base -------------------------------------------------------------
FROM docker.io/library/debian:bookworm-slim AS runtime-base
# System roots for Let's Encrypt (ACME) and the OIDC provider.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid so secret files and volumes can be owned by it on the host.
# The state dir is created 0700 and owned by that user, so a new named volume
# mounted there starts out the same.
RUN groupadd --system --gid 10001 portcullis \
 && useradd --system --uid 10001 --gid portcullis --no-create-home \
      --home-dir /var/lib/portcullis --shell /usr/sbin/nologin portcullis \
 && install -d -m 0700 -o portcullis -g portcullis /var/lib/portcullis \
 && install -d -m 0755 /etc/portcullis
COPY config/portcullis.toml /usr/share/doc/portcullis/portcullis.toml.example

ENV PORTCULLIS_CONFIG=/etc/portcullis/portcullis.toml \
    RUST_LOG=info
USER 10001:10001
# ACME account, certificates, sessions (server.state_dir).
VOLUME ["/var/lib/portcullis"]
EXPOSE 80 443
# GET /healthz on the admin listener the config names (server.admin), with
# the binary itself (no curl here); with admin = "off", a connect to the
# gateway's http or https listener.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["portcullis", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["--log-format", "json", "run", "--config", "/etc/portcullis/portcullis.toml"]

# --- prebuilt binary (tests) --------------------------------------------------
FROM runtime-base AS prebuilt
COPY dist/portcullis /usr/local/bin/portcullis

# --- build ------------------------------------------------------------------
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Only what the release build reads (Cargo.toml names the benches, so cargo
# wants their files to exist).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin portcullis \
 && install -D -m 0755 target/dist/portcullis /out/portcullis

# --- runtime ----------------------------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /out/portcullis /usr/local/bin/portcullis
