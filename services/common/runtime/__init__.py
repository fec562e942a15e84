"""The service runtime of decision 0017 (docs/decisions/0017-batch-runtime-and-service-owned-state.md)."""
