"""Fleet domain: stores, enrollment, credentials, heartbeats, assignments."""
