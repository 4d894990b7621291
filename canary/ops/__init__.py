"""Operator-side tooling: the control view (pointers, deployments, routers) and command issuing."""
