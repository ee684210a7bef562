"""The shared-plan domain: plain dataclasses and the rules of collaboration (stdlib only)."""
