"""One module per provider kind, each with an ``Adapter`` (see devstackgate.cloud)."""
