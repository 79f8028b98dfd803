"""mlinfra serving."""
