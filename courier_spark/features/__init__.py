"""Embeddings to feature columns: embedding items, k-means centroids, cluster
IDs and similarity scores, the versioned feature tables (validity intervals)
and their health record."""
