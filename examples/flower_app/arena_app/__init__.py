"""A Flower app running backdoor-arena's aggregators and client attacks (see README.md)."""
