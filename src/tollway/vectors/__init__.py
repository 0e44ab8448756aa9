"""Vector indexes for retrieval (the Vectorize API): see docs/vectors.md."""
