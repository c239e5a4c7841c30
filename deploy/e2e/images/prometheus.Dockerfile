# Prometheus for the HA stack where no registry is reachable: the binary of Debian's prometheus
# package (copied into the build context by scripts/e2e-deploy) on the offline base image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY prometheus /bin/prometheus
RUN mkdir -p /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
