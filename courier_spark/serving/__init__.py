"""Features to consumers: which versions serve, point-in-time retrieval, the
Redis online store and its client, the Feast repository, the streaming stage
that keeps new items' features current, and ``FeatureStore``, the consumers'
API over all of it."""
