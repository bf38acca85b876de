"""One module per peer of the benchmark, each with the same interface (see
``base.Peer``)."""
