"""The shared kernel: event envelope, outbox, delivery ledger, consumer registry."""
