# RouteIQ's container image: `routeiq serve` behind tini (PID 1: forwards SIGTERM, reaps
# children), as a non-root user, with no compiler in the final stage.
#
#   docker build -t routeiq .                          # online: the official slim Python image
#   docker build --build-arg BASE_IMAGE=my/python:3.11 \
#                --build-arg OFFLINE=1 -t routeiq .    # offline: wheels from deploy/wheelhouse/
#   docker build --target upstream -t routeiq-upstream .   # the fake OpenAI-compatible upstream
#
# An offline build needs a base image with python3 (+ venv) and tini, and every wheel in
# deploy/wheelhouse/ (`pip wheel --wheel-dir deploy/wheelhouse . hatchling`); it never reaches
# a package index. Config: mount a YAML file and set ROUTEIQ_CONFIG (without one the embedded
# default serves); secrets (ROUTEIQ_MASTER_KEY, ROUTEIQ_ADMIN_KEY, provider keys) come from the
# environment, never from the image.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG OFFLINE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/routeiq
COPY deploy/wheelhouse/ /wheels/
# Dependencies first (this layer changes only with pyproject.toml), then RouteIQ itself.
COPY pyproject.toml /src/
RUN if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /wheels; fi \
 && python3 -c "import tomllib; print(*tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
 && /opt/routeiq/bin/pip install "$@" -r /tmp/requirements.txt
COPY README.md /src/
COPY statecharts/ /src/statecharts/
COPY routeiq/ /src/routeiq/
RUN if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /wheels; fi \
 && /opt/routeiq/bin/pip install "$@" --no-deps /src \
 && /opt/routeiq/bin/pip uninstall -y pip

FROM ${BASE_IMAGE} AS runtime
# The official image has no tini; an offline base must bring its own (no package index here).
RUN command -v tini >/dev/null 2>&1 || { apt-get update \
      && apt-get install -y --no-install-recommends tini \
      && rm -rf /var/lib/apt/lists/*; } \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin routeiq
COPY --from=build /opt/routeiq /opt/routeiq
ENV PATH=/opt/routeiq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    ROUTEIQ_HOST=0.0.0.0 \
    ROUTEIQ_PORT=4000
USER 10001
WORKDIR /tmp
STOPSIGNAL SIGTERM

FROM runtime AS upstream
COPY tests/__init__.py /opt/upstream/tests/__init__.py
COPY tests/support/__init__.py tests/support/upstream.py /opt/upstream/tests/support/
WORKDIR /opt/upstream
EXPOSE 8000
ENTRYPOINT ["tini", "--", "python", "-m", "tests.support.upstream"]
CMD ["--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS gateway
EXPOSE 4000
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('ROUTEIQ_PORT', '4000'), timeout=2)"]
ENTRYPOINT ["tini", "--", "routeiq", "serve"]
