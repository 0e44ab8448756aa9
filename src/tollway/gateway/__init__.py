"""The AI gateway: routing, rate limits, response cache, spend limits and the request log."""
