"""Train audio embeddings from doppelgänger pair shards."""
