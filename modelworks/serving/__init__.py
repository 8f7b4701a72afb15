"""Serving: the model pool that loads versions on first use and keeps them warm."""
