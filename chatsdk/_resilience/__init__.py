"""Per-host resilience: circuit breakers, retry budgets and the bounded per-host registry."""
