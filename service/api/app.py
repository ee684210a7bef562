"""The Flask application factory."""

from __future__ import annotations

from flask import Flask
from sqlalchemy.engine import Engine

from service import console
from service.api import (
    errors,
    fhir_notifications,
    health,
    intake_lane,
    metrics,
    openapi,
    outcomes,
    plans,
    subscriptions,
    webhooks,
)
from service.api import history as plan_history  # GET /plans/{id}/history
from service.api.container import Container
from service.api.digits import AsciiIntConverter
from service.domain.errors import ConfigurationError
from service.settings import Settings
from service.store.db import create_engine


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    """Build the app from settings (the environment by default); no work happens at import time."""
    settings = settings or Settings.from_env()
    if not settings.signing_secrets:
        raise ConfigurationError(
            "PLANBRIDGE_WEBHOOK_SECRET is not set (nor PLANBRIDGE_WEBHOOK_SENDERS): webhooks could not be verified",
            setting="PLANBRIDGE_WEBHOOK_SECRET",
        )
    app = Flask("planbridge")
    app.url_map.converters["int"] = AsciiIntConverter  # <int:...> reads ASCII digits only (before any route)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    engine = engine or create_engine(settings.database_url)
    app.extensions["planbridge"] = Container(settings=settings, engine=engine)
    errors.init_app(app)
    metrics.init_app(app, engine)
    for blueprint in (
        health.bp,
        webhooks.bp,
        plans.bp,
        outcomes.bp,
        openapi.bp,
        fhir_notifications.bp,
        subscriptions.bp,
        console.bp,
        plan_history.bp,
    ):
        app.register_blueprint(blueprint)
    intake_lane.install(app)  # signed team events skip Flask's dispatch (service/api/intake_lane.py)
    return app
