"""Compatibility namespace: the spec imports ``from modules.canary import …``."""
