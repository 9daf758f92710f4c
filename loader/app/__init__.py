"""The application on top: the daemon (composition root), the command line, `inspect` and
`run`, and the demo repository. May import every other package.
"""
