"""odeserve's built-in plugins (installed as ``odeserve.plugins``)."""
