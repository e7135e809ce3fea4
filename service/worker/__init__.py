"""The inference worker: a spawned process that loads one model, batches requests and runs them."""
