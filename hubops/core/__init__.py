"""The core every other part of hubops builds on: parameters, engine clients, labels, results,
errors, progress, the operator folder, paths, versioned Swarm objects and certificates.

May import: the standard library and third-party packages; within hubops, only hubops.core.
"""
