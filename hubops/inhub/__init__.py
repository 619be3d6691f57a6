"""Code that runs inside the hub's container, not in the operator's hubops.

The hub image installs this folder alone (as `hubops/inhub/`, with no `hubops/__init__.py` beside
it, so `hubops` is a namespace package there): the generated jupyterhub_config.py imports
`hubops.inhub.spawner`. Modules here may therefore import only the standard library and what the
hub image pins (jupyterhub, dockerspawner, docker, traitlets, tornado), never another hubops module
nor a dependency of hubops (pydantic, click, ...). tests/unit/test_spawner.py holds that rule.
"""
