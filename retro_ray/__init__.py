"""retro_ray: Retroformer on Ray."""
