"""Across machines on Ray Serve: one watcher decides, many replicas load and serve.

The watcher runs the sources and selection policies and decides, per model, which versions
every replica keeps loaded and which ones requests are routed to; replicas (Serve
deployment replicas, each with its own manager, servables, batching and REST app) load what
they are told and report back. `rollout.py` holds the two-phase rollout's decisions.

May import `loader.base`, `loader.sources`, `loader.manager`, `loader.servables`,
`loader.serving`, `loader.config`, `policies` and `loader.app.parts` (the daemon's
building blocks). Only `application.py` imports `ray` (an optional
extra: `pip install modelwatch[ray]`).
"""
