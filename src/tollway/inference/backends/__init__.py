"""Model backends: llama_cpp (GGUF chat), sentence_transformers (embeddings),
openai (any OpenAI-compatible upstream)."""
