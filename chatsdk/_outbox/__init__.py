"""The offline outbox: the Outbox facade, its storage backends and the background drainer."""
