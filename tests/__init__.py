"""hookserve tests: a package, so ``tests.fixtures.*`` imports and the repo root is on sys.path."""
