"""OpenTelemetry traces: a request's spans in the API server, and its batch's spans in the worker.

Off by default; see :mod:`service.tracing.settings` for how it is turned on. With tracing off nothing
here runs on the request path but one ``is None`` check.
"""
