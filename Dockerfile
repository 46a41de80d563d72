# datapulse: one long-lived process serving SSE streams and MCP sessions (docs/deploy.md).
#
#   docker build -t datapulse .
#   docker run --rm -p 8000:8000 -e LOCAL_BEARER_TOKEN="$(cat token.txt)" datapulse
#
# Base: the official slim image, pinned to a Python minor and a Debian release.
# - slim: Debian without compilers and docs, a fraction of the full image's size; every
#   dependency ships manylinux wheels, so nothing is compiled and no build tools are needed.
# - 3.12: inside requires-python (>= 3.11), with security fixes until 2028; the minor is pinned
#   so a rebuild never moves to a new Python on its own (patch releases still arrive).
# - trixie: pins the Debian release too, so a rebuild does not switch the C library underneath.
# For reproducible production builds, pin the digest as well: python:3.12-slim-trixie@sha256:...
FROM python:3.12-slim-trixie

# PYTHONUNBUFFERED: log lines reach `docker logs` at once, not when a buffer fills.
# DATAPULSE_HOST: inside a container the loopback interface is the container's own, so the
# server must bind every interface to be reachable through a published port or an ingress.
# A non-loopback bind turns off the loopback-only Host check, so give it a token (or JWT
# settings) by environment or a secret at run time: never here (docs/deploy.md).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATAPULSE_HOST=0.0.0.0 \
    DATAPULSE_PORT=8000

# Only what the package build reads (.dockerignore keeps the rest out of the context). The source
# is removed after the install so the runtime imports the installed package, never a stray copy.
COPY pyproject.toml README.md /tmp/datapulse-src/
COPY datapulse /tmp/datapulse-src/datapulse
RUN pip install --no-cache-dir /tmp/datapulse-src \
    && rm -rf /tmp/datapulse-src

# An unprivileged user with a fixed numeric id (Kubernetes' runAsNonRoot can verify a number).
RUN groupadd --system --gid 10001 datapulse \
    && useradd --system --uid 10001 --gid datapulse --create-home --home-dir /home/datapulse \
        --shell /usr/sbin/nologin datapulse
WORKDIR /home/datapulse
USER 10001:10001

EXPOSE 8000

# Liveness with the standard library (slim images have no curl). http.client, not urllib: it
# ignores HTTP(S)_PROXY variables, which must never route a probe of 127.0.0.1 elsewhere. The
# Host it sends is the first DATAPULSE_ALLOWED_HOSTS name when that list is set (the server then
# answers only to those names, 421 otherwise), else 127.0.0.1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import http.client, os; e = os.environ.get; c = http.client.HTTPConnection('127.0.0.1', int(e('DATAPULSE_PORT', '8000')), timeout=4); c.request('GET', '/healthz', headers={'Host': e('DATAPULSE_ALLOWED_HOSTS', '').split(',')[0].strip().replace('*', '') or '127.0.0.1'}); raise SystemExit(c.getresponse().status != 200)"]

# On SIGTERM the server stops accepting, lets in-flight work finish for DATAPULSE_SHUTDOWN_GRACE
# seconds (default 5, inside docker stop's 10) and exits 0; a second signal stops it at once.
STOPSIGNAL SIGTERM

# Exec form: Python is PID 1 and receives the signals itself (no shell in between to swallow
# them). Arguments after the image name are datapulse flags: docker run ... datapulse --log-level DEBUG
ENTRYPOINT ["python", "-m", "datapulse"]
