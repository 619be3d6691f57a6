"""The record: the runner that chains runbooks with papermill (runner.py, kernels.py), the
tamper-evident ledger of a run (ledger.py), redaction of secrets (redact.py) and the HTML report
(report.py). The notebooks hand their results over through hubops.core.record only.

May import: hubops.core. Never a stage or day-2 module: the runner knows notebooks, not stages.
"""
