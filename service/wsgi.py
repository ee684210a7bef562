"""WSGI entry point for running under any server: `gunicorn service.wsgi:app`."""

from service.api.app import create_app

app = create_app()
