"""Entry points that run as Ray jobs (`python -m jobs.<name>`)."""
