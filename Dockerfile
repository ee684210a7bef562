# planbridge API under gunicorn, as a non-root user. Point it at a FHIR server and a database:
#   docker run -e FHIR_BASE_URL=https://ehr.example.org/fhir -e PLANBRIDGE_WEBHOOK_SECRET=whsec_... \
#              -e DATABASE_URL=postgresql://planbridge@db/planbridge -p 8000:8000 planbridge
# Run the outbox worker from the same image with the command `planbridge worker`.
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
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["sh", "-c", "planbridge db upgrade && exec planbridge serve"]
