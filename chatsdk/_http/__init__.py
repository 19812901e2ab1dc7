"""The request path: ChatSession, ResilientAdapter, the retry policy, deduplication."""
