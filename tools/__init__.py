"""Repository tools that are not part of the product: checks that `make lint` runs."""
