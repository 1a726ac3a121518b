"""Deployment tooling: the bento's container image, built and tested (`deploy.container`)."""
