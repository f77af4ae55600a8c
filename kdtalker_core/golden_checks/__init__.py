"""Golden-fixture checkers, one module per family of fixture kinds (see kdtalker_core.golden)."""
