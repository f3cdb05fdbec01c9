"""The admin dashboard: server-rendered pages over the registry, fleet, rollouts and monitoring."""
