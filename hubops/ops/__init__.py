"""The day-2 operations, one module per runbook: runbooks/ops/NAME.ipynb calls
hubops/ops/NAME.py (dashes become underscores).

May import: hubops.core, hubops.hub, the public names of hubops.stages and of other ops modules,
and hubops.audit.redact (to keep secrets out of backups). Never hubops.audit's runner, hubops.lab
or hubops.cli.
"""
