"""The deploy stages, one module per runbook: runbooks/NN-NAME.ipynb calls hubops/stages/NAME.py
(40-tls also uses tls_acme.py, the ACME client), tested in tests/*/test_NAME*.py.

May import: hubops.core, hubops.hub, and other stages' public names (never a name with a leading
underscore). Never hubops.ops, hubops.audit, hubops.lab or hubops.cli.
"""
