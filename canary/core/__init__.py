"""Kafka-free core: event models, quantile sketch, window aggregation and finalization, SLO judging.

Plain Python and numpy only, shared by the live stream processor, replay and reports; everything here is
deterministic so a replay reproduces the live results bit for bit.
"""
