"""The console: server-rendered pages for teams and integrators under /console (see views)."""

from service.console.views import bp

__all__ = ["bp"]
