"""Model sources (gguf | hf | tiny), loading, hashing, tokenizer compatibility, license gate."""
