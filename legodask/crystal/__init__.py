"""Crystal-level ideas: what a found crystal is (dimensionality, net topology)."""
