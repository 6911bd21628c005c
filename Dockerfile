# syntax=docker/dockerfile:1

# meshguard image: a static Go binary on distroless, running as the nonroot user.
#
#   docker build -t ghcr.io/meshguard/meshguard:0.1.0 .
#   docker run --rm -p 9001:9001 ghcr.io/meshguard/meshguard:0.1.0
#
# The image's default command serves ext_proc on 0.0.0.0:9001 with its data in
# /var/lib/meshguard; mount a volume there to keep baselines across restarts.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/meshguard ./cmd/meshguard
# The data directory, created here because the final image has no shell.
RUN mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/meshguard /meshguard
COPY --from=build --chown=65532:65532 /out/data /var/lib/meshguard
USER 65532:65532
# 9001 ext_proc + grpc.health.v1, 9002 admin (loopback unless --admin-allow-remote),
# 18000 xDS + access-log service (with --xds-listen).
EXPOSE 9001 9002 18000
ENTRYPOINT ["/meshguard"]
CMD ["serve", "--listen", "0.0.0.0:9001", "--data-dir", "/var/lib/meshguard"]
