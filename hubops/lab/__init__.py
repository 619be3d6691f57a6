"""The lab: several Docker engines on one Linux machine, each in its own namespaces, for
rehearsal and tests (cluster.py). A tool beside the stages: no stage knows whether its hosts are
a lab.

May import: hubops.core. Never a stage, day-2 or record module.
"""
