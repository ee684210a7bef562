"""Pure functions between the shared-plan model and FHIR R4 resources (no I/O, no clock)."""
