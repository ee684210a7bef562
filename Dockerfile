# planbridge API under gunicorn, as a non-root user. Point it at a FHIR server and a database:
#   docker run -e FHIR_BASE_URL=https://ehr.example.org/fhir -e PLANBRIDGE_WEBHOOK_SECRET=whsec_... \
#              -e PLANBRIDGE_API_KEYS=... -v planbridge-data:/app/var -p 8000:8000 planbridge
# SQLite lives in the volume /app/var by default (DATABASE_URL=postgresql://... to use PostgreSQL), and so
# does the console's session key when PLANBRIDGE_SESSION_SECRET is unset (`serve` generates it there once,
# so every gunicorn worker, and the next start, signs with the same key).
# The outbox worker (`planbridge worker`) and the team-notification worker (`planbridge notifications
# worker`) run from the same image as their own containers: see compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 planbridge
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY mappings ./mappings
COPY fixtures ./fixtures
RUN pip install . && mkdir -p /app/var && chown planbridge /app/var

USER planbridge
ENV DATABASE_URL=sqlite:////app/var/planbridge.db PLANBRIDGE_HOST=0.0.0.0 PLANBRIDGE_PORT=8000
VOLUME ["/app/var"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; port = os.environ.get('PLANBRIDGE_PORT') or '8000'; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status != 200)"]
CMD ["sh", "-c", "planbridge db upgrade && exec planbridge serve"]
