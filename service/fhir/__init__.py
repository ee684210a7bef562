"""The FHIR server client: one session, one request function, one exception tree."""
