"""Deployment (installed as ``odeserve.export``): compiled solves and exported artifacts."""
