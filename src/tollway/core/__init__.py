"""Core: config, storage, ids, money, errors, clock."""
