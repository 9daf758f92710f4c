"""modelwatch: a TensorFlow model server that watches storage and hot-swaps versions.

The sub-packages follow the data flow: `sources` report ready versions, the `manager` loads
what each model's policy (`policies`) aspires to, `servables` are the loaded versions, and
`serving` answers requests over REST and gRPC. `config` and `app` sit on top and build the
rest; `base` holds the few types every layer shares. Imports point down that list only.
"""
