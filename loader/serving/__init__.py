"""Serving: one transport-agnostic data plane, metrics, the request log, the operator view
(what the operator page shows), the certificates both transports present (`tls`), and the
REST and gRPC transports.

May import `loader.base`, `loader.manager` and `loader.servables`; never `config` or `app`
(what a transport needs from them, such as a reload, is handed to it as a callable).
"""
