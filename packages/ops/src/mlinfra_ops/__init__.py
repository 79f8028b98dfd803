"""mlinfra ops."""
