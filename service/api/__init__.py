"""The HTTP API: app factory, blueprints, schemas and error handlers."""
