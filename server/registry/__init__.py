"""Registry domain: models, versions, aliases, runs, datasets, lineage."""
