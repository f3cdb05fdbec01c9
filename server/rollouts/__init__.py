"""Canary rollouts: plans, waves, gates, the engine that decides."""
