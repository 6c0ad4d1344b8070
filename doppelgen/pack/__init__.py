"""The real-data baseline: a folder of recordings packed into pair shards (``doppelgen pack``)."""
