# vastpanel in one container, beside the LLM gateway: docker build -t vastpanel .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The app runs from this tree (templates/ and static/ sit beside the package), so it is
# installed editable: pip brings the dependencies and the code stays in /app, owned by root.
COPY . /app
RUN pip install -e . \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home vastpanel \
    && mkdir -p /app/data \
    && chown vastpanel:vastpanel /app/data \
    && chmod 0700 /app/data

USER vastpanel
# The session cookie is always Secure here: behind a TLS proxy in another container (not on
# loopback), gunicorn ignores its X-Forwarded-Proto unless FORWARDED_ALLOW_IPS names it, and
# the cookie would otherwise go out without Secure. See docs/operations.md, "The container".
ENV VASTPANEL_BIND=0.0.0.0:8000 \
    VAST_DB_PATH=/app/data/vastpanel.db \
    SESSION_COOKIE_SECURE=true
# The SQLite file (sessions, costs, audit log) must outlive the container.
VOLUME ["/app/data"]
EXPOSE 8000

# No curl in the image: a few lines of Python ask GET /healthz on the port of VASTPANEL_BIND.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "vastpanel.healthcheck"]

# The production command of docs/operations.md.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "app:app"]
