"""Monitoring domain of the server: stored accuracy and drift reports, their queries, alerts and webhooks.

(Named ``quality`` because ``server/monitoring.py`` already holds the server's Prometheus metrics.)
"""
