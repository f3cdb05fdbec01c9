"""Replenishment: the distribution of demand over lead time and review period, and order-up-to policies."""
