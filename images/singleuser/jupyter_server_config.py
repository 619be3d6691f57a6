# Installed as /etc/jupyter/jupyter_server_config.py in the single-user image (hubops).
# Browsers that reached this server over HTTPS through the hub's proxy keep to HTTPS for a year;
# jupyterhub-singleuser adds its own headers (X-JupyterHub-Version, the CSP) beside this one.
c = get_config()  # noqa: F821 - provided by Jupyter's config loader
c.ServerApp.tornado_settings = {"headers": {"Strict-Transport-Security": "max-age=31536000"}}
