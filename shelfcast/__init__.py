"""shelfcast: edge/on-prem MLOps for retail demand forecasting."""

__version__ = "0.1.0"
