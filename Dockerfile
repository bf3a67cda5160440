# syntax=docker/dockerfile:1.7
# One image for every PayFlow component and the operator:
#   /usr/local/bin/payflow            (default entrypoint: `payflow <subcommand>`)
#   /usr/local/bin/payflow-operator   (the operator Deployment sets it as its command)
#
#   DOCKER_BUILDKIT=1 docker build --build-arg REVISION="$(git rev-parse HEAD)" \
#       -t ghcr.io/payflow/payflow:0.1.0 .
#
# The build stage keeps cargo's registry and target directory in BuildKit
# cache mounts, so a rebuild after a source change recompiles only the
# workspace crates. The runtime stage is distroless: glibc and libgcc (what
# the binaries link), CA certificates, no shell, no package manager.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The target dir is a cache mount (gone after this step), so the binaries are
# copied out in the same RUN.
RUN --mount=type=cache,id=payflow-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=payflow-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=payflow-target,target=/src/target \
    cargo build --release --locked -p payflow -p payflow-operator \
    && mkdir -p /out \
    && cp target/release/payflow target/release/payflow-operator /out/

# :nonroot is uid/gid 65532; USER repeats it numerically so that
# `runAsNonRoot` can be verified by the kubelet without reading /etc/passwd.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="payflow" \
      org.opencontainers.image.description="PayFlow wallet-to-wallet payments: every service (payflow) and the Kubernetes operator (payflow-operator)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/payflow /out/payflow-operator /usr/local/bin/
USER 65532:65532
EXPOSE 3000 3001 3002 3003 3004 3005 8080
ENTRYPOINT ["/usr/local/bin/payflow"]
CMD ["--help"]
