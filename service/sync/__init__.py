"""Keeping plans and their FHIR copies in step: pushes and the outbox worker."""
