"""Sentry ingest protocol, as pure functions: auth and DSNs, body decompression with hard limits, envelope
parsing, and the normalisation + grouping of a Sentry event into Faultline's ingest payload.

No I/O here: api/routes/sentry.py reads the request and calls these; tests call them directly.
"""
