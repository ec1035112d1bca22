"""Bridges to other libraries. ``revsde.integrations.diffusers`` imports diffusers; nothing here is
imported by ``import revsde``."""
