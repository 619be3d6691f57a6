"""The running hub: finding it (service, image, node, container), waiting until it serves, its
REST API client and trust path (running.py), and the one function that writes its configuration
(config.py).

May import: hubops.core.
"""
