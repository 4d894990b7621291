"""Metrics, health endpoints and structured logs of the long-running services (router, worker).

Nothing in here is imported by the Kafka-free core (``canary.core``, ``canary.pipeline``): the services
count at their own boundary (``router/``, ``streams/``) and expose it here.
"""
