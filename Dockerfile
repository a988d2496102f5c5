# The service image: one image, two roles (web: Daphne; worker: run_huey), see docker-compose.yml.
# .dockerignore keeps secrets and local state (var/, *.sqlite3, .env, .git, .venv) out of it.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libmariadb-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir ".[mysql]"
COPY . .

ENV PYTHONUNBUFFERED=1 \
    STATIC_ROOT=/app/static \
    VAR_DIR=/app/var
# The admin's CSS and JS, collected for a proxy that serves /static/ itself (Daphne serves the
# same files either way). The key below exists for this one command only: settings need one,
# and without it a random key would be written into the image's var/.
RUN SECRET_KEY=collectstatic-only-this-is-not-a-secret-0000 \
    python manage.py collectstatic --noinput -v0 \
    && rm -rf /app/var \
    && useradd --system --uid 10001 --home-dir /app app \
    && mkdir -p /app/var && chown app /app/var
USER app

EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "project.asgi:application"]
