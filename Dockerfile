# syntax=docker/dockerfile:1

# meshguard image: a static Go binary on distroless, running as the nonroot user.
#
#   docker build -t ghcr.io/meshguard/meshguard:0.1.0 .
#   docker run --rm -v $PWD/config.yaml:/etc/meshguard/config.yaml:ro ghcr.io/meshguard/meshguard:0.1.0
#
# The image's default command reads /etc/meshguard/config.yaml (install/image/config.yaml:
# data in /var/lib/meshguard, meshguard's loopback listeners); every install layout mounts
# its own config over /etc/meshguard. Mount a volume at /var/lib/meshguard to keep
# baselines across restarts.

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
COPY install/image/config.yaml /etc/meshguard/config.yaml
USER 65532:65532
# The ports the install layouts use: 9001 ext_proc + grpc.health.v1, 18000 xDS +
# access-log service, 9003 health-listen (/healthz, /readyz, /metrics).
EXPOSE 9001 9003 18000
ENTRYPOINT ["/meshguard"]
CMD ["serve", "--config", "/etc/meshguard/config.yaml"]
