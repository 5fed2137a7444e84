"""Two workers: a Cart component that calls a Pricing component hosted by another worker process."""
